/**
 * The only error the prepare stage throws: the message cannot be made 7-bit clean without changing
 * what it says, or it exceeds a configured limit. The SMTP layer answers it with 554 5.6.0.
 */
export class MimeError extends Error {
  override name = 'MimeError';
}
