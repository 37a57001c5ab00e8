/** Shared settings for property and fuzz tests: a fixed seed in CI, more runs on request. */

/** Runs per property: `VIREO_FUZZ_RUNS` (as `deno task fuzz` sets it) or `fallback`. */
export function fuzzRuns(fallback: number): number {
  const value = Number(Deno.env.get("VIREO_FUZZ_RUNS") ?? fallback);
  return Number.isInteger(value) && value > 0 ? value : fallback;
}

/** The seed: `VIREO_FUZZ_SEED`, or a fixed value so that CI is repeatable. */
export function fuzzSeed(): number {
  const value = Number(Deno.env.get("VIREO_FUZZ_SEED") ?? 0x5eed);
  return Number.isInteger(value) ? value : 0x5eed;
}
