//! The GCRA step as one Lua script, run atomically by Redis on the server's clock.
//!
//! The same arithmetic as [`Gcra::step`](super::super::gcra::Gcra), in microseconds since the
//! Unix epoch (`TIME`), which a Lua number (a double) holds exactly for the next 250 years. The
//! key holds the bucket's TAT and expires when the bucket is full again, so an idle key takes
//! no memory in Redis (a missing key is a full bucket, as in the in-process table).
//!
//! The script can grant several tokens at once (lease mode): as many as the bucket holds now,
//! up to the number asked for; a request that finds fewer than one is delayed or rejected
//! exactly as a single request would be.

use ::redis::aio::ConnectionLike;
use ::redis::{RedisResult, Script};

use super::super::gcra::Verdict;

/// KEYS[1]: the bucket. ARGV: interval, burst tolerance, max delay (µs), tokens wanted.
/// Returns `{code, a, b, granted}`: code 0 = allowed (a = slack, b = reset), 1 = delayed
/// (a = delay, b = reset), 2 = rejected (a = retry after, b = reset); µs.
const GCRA_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tol = tonumber(ARGV[2])
local max_delay = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
local base = tat
if base < now then base = now end
local room = math.floor((tol - (base - now)) / interval)
if room >= 1 then
  local k = want
  if room < k then k = room end
  local new_tat = base + k * interval
  local ahead = new_tat - now
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
  return {0, tol - ahead, ahead, k}
end
local new_tat = base + interval
local ahead = new_tat - now
local delay = ahead - tol
if delay <= max_delay then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
  return {1, delay, ahead, 1}
end
local reset = tat - now
if reset < 0 then reset = 0 end
return {2, delay, reset, 0}
";

/// The script's parameters, fixed when the layer is built (µs).
#[derive(Debug, Clone, Copy)]
pub(super) struct Params {
    pub(super) interval_us: u64,
    pub(super) tolerance_us: u64,
    pub(super) max_delay_us: u64,
}

impl Params {
    /// From the layer's nanosecond GCRA parameters, rounded to whole microseconds (at least 1
    /// per token).
    pub(super) fn from_nanos(interval: u64, burst: u32, max_delay: u64) -> Self {
        let interval_us = interval.div_ceil(1_000).max(1);
        Params {
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst)),
            max_delay_us: max_delay / 1_000,
        }
    }
}

/// The loaded script (its SHA1 computed once; `EVALSHA`, falling back to `EVAL` when the server
/// does not know it yet, e.g. after a restart).
#[derive(Debug)]
pub(super) struct GcraScript {
    script: Script,
}

/// One answer of the script: the verdict (ns) and how many tokens it granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Answer {
    pub(super) verdict: Verdict,
    pub(super) granted: u32,
}

impl GcraScript {
    pub(super) fn new() -> Self {
        GcraScript {
            script: Script::new(GCRA_LUA),
        }
    }

    /// One step on `key`, asking for `want` tokens.
    pub(super) async fn run(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        key: &[u8],
        params: Params,
        want: u32,
    ) -> RedisResult<Answer> {
        let (code, a, b, granted): (u8, i64, i64, i64) = self
            .script
            .key(key)
            .arg(params.interval_us)
            .arg(params.tolerance_us)
            .arg(params.max_delay_us)
            .arg(want)
            .invoke_async(conn)
            .await?;
        let ns = |us: i64| u64::try_from(us).unwrap_or(0).saturating_mul(1_000);
        let (a, b) = (ns(a), ns(b));
        let verdict = match code {
            0 => Verdict::Allow { slack: a, reset: b },
            1 => Verdict::Delay { delay: a, reset: b },
            _ => Verdict::Reject {
                retry_after: a,
                reset: b,
            },
        };
        Ok(Answer {
            verdict,
            granted: u32::try_from(granted).unwrap_or(0),
        })
    }
}
