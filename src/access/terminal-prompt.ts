/**
 * The password prompt of `smime-relay hash-password` on a terminal. Only a real terminal can
 * exercise it (echo off is the point), so its test drives the CLI through script(1) in
 * test/access.test.ts; that runs outside the test process, where mutation testing cannot see it,
 * and stryker.config.mjs leaves this file out.
 */

/**
 * Reads one line per prompt from a terminal with echo off, so the password never shows on screen
 * or in scrollback. One reader for all prompts: typed-ahead input arrives in one chunk.
 * Resolves undefined on Ctrl-C or Ctrl-D.
 */
function readHidden(prompts: string[]): Promise<string[] | undefined> {
  const stdin = process.stdin;
  const answers: string[] = [];
  let current = '';
  let previous = '';
  return new Promise((resolve) => {
    const finish = (result: string[] | undefined) => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      for (const ch of chunk.toString('utf8')) {
        const afterCr = previous === '\r';
        previous = ch;
        if (ch === '\n' && afterCr) continue;
        if (ch === '\r' || ch === '\n') {
          answers.push(current);
          current = '';
          process.stderr.write('\n');
          if (answers.length === prompts.length) return finish(answers);
          process.stderr.write(prompts[answers.length]!);
        } else if (ch === '\u0003' || ch === '\u0004') {
          process.stderr.write('\n');
          return finish(undefined);
        } else if (ch === '\u007f' || ch === '\b') {
          current = current.slice(0, -1);
        } else {
          current += ch;
        }
      }
    };
    // Echo off before the prompt appears: a password typed or pasted the moment the prompt
    // shows must never be echoed by the terminal.
    stdin.setRawMode(true);
    process.stderr.write(prompts[0]!);
    stdin.resume();
    stdin.on('data', onData);
  });
}

/** Asks for a new password twice on the terminal: the password, or why there is none. */
export async function askNewPassword(): Promise<{ password: string } | { problem: string }> {
  const answers = await readHidden(['Password: ', 'Repeat password: ']);
  if (!answers) return { problem: 'cancelled' };
  if (answers[0] !== answers[1]) return { problem: 'the passwords differ' };
  return { password: answers[0]! };
}
