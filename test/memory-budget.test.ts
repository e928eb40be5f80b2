import { describe, expect, it } from 'vitest';
import { MemoryBudget } from '../src/memory/budget.js';
import { messageFootprint } from '../src/memory/footprint.js';

const settle = () => new Promise((r) => setImmediate(r));

describe('MemoryBudget (SMIME_RELAY_MEMORY_BUDGET)', () => {
  it('reserves what fits, and nothing more, and counts what is held', () => {
    const budget = new MemoryBudget(100);
    const a = budget.tryReserve(60)!;
    expect(a.bytes).toBe(60);
    expect(budget.tryReserve(41)).toBeUndefined();
    const b = budget.tryReserve(40)!;
    expect(budget.reserved).toBe(100);
    a.release();
    a.release(); // a second release gives nothing back twice
    expect(budget.reserved).toBe(40);
    b.release();
    expect(budget.reserved).toBe(0);
  });

  it('grows a reservation only when the room is there now, and always lets it shrink', () => {
    const budget = new MemoryBudget(100);
    const a = budget.tryReserve(10)!;
    const other = budget.tryReserve(50)!;
    expect(a.ensure(40)).toBe(true);
    expect(a.bytes).toBe(40);
    expect(a.ensure(30)).toBe(true); // already holds that much
    expect(a.bytes).toBe(40);
    expect(a.resize(51)).toBe(false); // 51 + 50 > 100: refused, unchanged
    expect(a.bytes).toBe(40);
    expect(budget.reserved).toBe(90);
    a.shrink(5);
    expect(a.bytes).toBe(5);
    a.shrink(20); // shrink never grows
    expect(a.bytes).toBe(5);
    other.release();
    a.release();
    expect(a.resize(10)).toBe(false); // a released reservation holds nothing any more
    expect(budget.reserved).toBe(0);
  });

  it('makes a reservation wait for room and grants it as soon as room is given back', async () => {
    const budget = new MemoryBudget(100);
    const holder = budget.tryReserve(80)!;
    let got: unknown;
    const waiting = budget.reserve(50, { waitMs: 60_000 }).then((r) => (got = r));
    await settle();
    expect(got).toBeUndefined();
    expect(budget.waiting).toBe(1);
    holder.resize(50);
    await waiting;
    expect(got).toMatchObject({ bytes: 50 });
    expect(budget.reserved).toBe(100);
    expect(budget.waiting).toBe(0);
  });

  it('lets a small reservation that fits go ahead of a large one that is waiting', async () => {
    const budget = new MemoryBudget(100);
    const holder = budget.tryReserve(70)!;
    const order: string[] = [];
    const large = budget.reserve(60, { waitMs: 60_000 }).then((r) => (order.push('large'), r));
    const small = budget.reserve(20, { waitMs: 60_000 }).then((r) => (order.push('small'), r));
    await small;
    expect(order).toEqual(['small']);
    holder.release();
    await large;
    expect(order).toEqual(['small', 'large']);
  });

  it('refuses at once what could never fit, instead of waiting for it', async () => {
    const budget = new MemoryBudget(100);
    expect(await budget.reserve(101, { waitMs: 60_000 })).toBe('larger-than-budget');
    expect(budget.waiting).toBe(0);
  });

  it('gives up after the wait, or when the caller cancels, and then holds nothing', async () => {
    const budget = new MemoryBudget(100);
    const holder = budget.tryReserve(100)!;
    expect(await budget.reserve(10, { waitMs: 20 })).toBe('timed-out');
    const cancel = new AbortController();
    const waiting = budget.reserve(10, { waitMs: 60_000, signal: cancel.signal });
    cancel.abort();
    expect(await waiting).toBe('cancelled');
    expect(budget.waiting).toBe(0);
    holder.release();
    expect(budget.reserved).toBe(0);
  });
});

describe('messageFootprint', () => {
  it('counts the received copy, and with signing the outgoing message too', () => {
    const size = 24 * 2 ** 20;
    expect(messageFootprint(size, false)).toBe(size);
    // base64 makes 4/3 of its input plus a CRLF every 76 characters
    expect(messageFootprint(size, true)).toBeGreaterThan(size + Math.ceil((size * 4) / 3) * (78 / 76));
    expect(messageFootprint(size, true)).toBeLessThan(2.5 * size);
  });
});
