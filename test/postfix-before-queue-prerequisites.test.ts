/**
 * deploy/postfix/before-queue/master.cf only works once Postfix has TLS and SASL on submission.
 * The snippet and the README say so, naming the main.cf parameters; this proves the parameters
 * are real and that, as shipped on a Postfix without them, every client is refused with exactly
 * the replies the documentation quotes.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawClient } from './support/client.js';
import { freePorts, requirePostfix, startPostfix, type PostfixInstance } from './support/postfix.js';

const read = (p: string) => readFileSync(fileURLToPath(new URL(`../${p}`, import.meta.url)), 'utf8');
const snippet = read('deploy/postfix/before-queue/master.cf');
const readme = read('README.md');
const PARAMETERS = ['smtpd_tls_chain_files', 'smtpd_sasl_type', 'smtpd_sasl_path'];
const STARTTLS_REFUSED = '454 4.7.0 TLS not available due to local problem';
const MAIL_REFUSED = '530 5.7.0 Must issue a STARTTLS command first';

describe('the before-queue snippet states its TLS and SASL prerequisite', () => {
  it('next to the snippet and in the README, naming the main.cf parameters and the replies clients get without them', () => {
    // Comment lines and README lines wrap; the sentences are read across the breaks.
    const header = snippet.slice(0, snippet.indexOf('\nsubmission ')).replace(/\n#\s*/g, ' ');
    expect(header).toMatch(/PREREQUISITE: TLS and SASL already working/);
    const section = readme.slice(readme.indexOf('**Before-queue alternative**'), readme.indexOf('Both snippets are proved')).replace(/\n/g, ' ');
    expect(section).toContain('It needs TLS and SASL already working on submission');
    for (const text of [header, section]) {
      for (const p of PARAMETERS) expect(text).toContain(p);
      expect(text).toContain(STARTTLS_REFUSED);
      expect(text).toContain(MAIL_REFUSED);
    }
  });
});

describe.skipIf(!requirePostfix())('as shipped, on a Postfix without TLS and SASL', () => {
  let postfix: PostfixInstance | undefined;
  let port = 0;

  beforeAll(async () => {
    const [submission, relay, reinject] = (await freePorts(3)) as [number, number, number];
    port = submission;
    postfix = await startPostfix({
      masterCf: snippet
        .replace(/^submission(?=\s+inet\s)/m, `127.0.0.1:${submission}`)
        .replace(/127\.0\.0\.1:10025\b/g, `127.0.0.1:${relay}`)
        .replace(/127\.0\.0\.1:10026\b/g, `127.0.0.1:${reinject}`),
    });
  }, 60_000);

  afterAll(async () => {
    await postfix?.stop();
  });

  it('the parameters the note names are Postfix parameters', async () => {
    for (const p of PARAMETERS) expect(await postfix!.postconf('-d', p)).toMatch(new RegExp(`^${p} =`));
  });

  it('refuses every client, with the replies the note quotes', async () => {
    const c = await RawClient.open(port);
    try {
      await c.hello();
      const mail = await c.command('MAIL FROM:<alerts@example.test>');
      expect(`${mail.code} ${mail.text}`).toBe(MAIL_REFUSED);
      const tls = await c.command('STARTTLS');
      expect(`${tls.code} ${tls.text}`).toBe(STARTTLS_REFUSED);
    } finally {
      c.close();
    }
  });
});
