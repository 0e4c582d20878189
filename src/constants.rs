//! Every limit of the system in one place, each with its unit in its name.
//!
//! Related limits are checked against each other at compile time, so a change
//! that breaks an assumption elsewhere fails the build instead of a run.

/// Largest cluster the core supports (N = 2F + 1 with F = 4). Dependency
/// vectors are fixed arrays of this length, so raising it costs memory in every
/// instance and every key of the conflict index.
pub const REPLICAS_MAX: usize = 9;

/// Most commands one instance (one batch) may carry.
pub const BATCH_COMMANDS_MAX: usize = 4096;

/// Longest key a command may carry.
pub const KEY_BYTES_MAX: usize = 1024;

/// Longest value a PUT may carry.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Most bytes of command records one instance (one batch) may carry. A
/// shard closes a batch before it would pass this.
pub const BATCH_BYTES_MAX: usize = 4 << 20;

/// Longest frame body on any connection: a batch plus the fixed part of the
/// largest message that carries one.
pub const FRAME_BODY_BYTES_MAX: usize = BATCH_BYTES_MAX + 4096;

/// Bytes a shard lets pile up for one peer link: a frame that would take
/// the queue past it is shed whole, counted (the core re-sends what
/// matters once the peer drains). An empty queue takes any one frame. At
/// 64 MiB a peer paused for 5 s came back to 64 MiB of stale frames from
/// each leader, seconds of work before it caught up (perf/RESULTS.md,
/// issue 19); a healthy loopback link rarely holds 1 MiB between sends.
pub const PEER_SEND_BUFFER_BYTES_MAX: usize = 8 << 20;

const _: () = assert!(FRAME_BODY_BYTES_MAX + 64 <= PEER_SEND_BUFFER_BYTES_MAX);

/// Unread response bytes a client connection may pile up before the replica
/// closes it.
pub const CLIENT_SEND_BUFFER_BYTES_MAX: usize = 64 << 20;

/// Time a new connection has to send its hello, and an outgoing one to
/// be answered.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Back-off between attempts to reach a peer: doubles from the first value
/// up to the second.
pub const PEER_RECONNECT_MS_MIN: u64 = 20;
pub const PEER_RECONNECT_MS_MAX: u64 = 1_000;

/// TCP keepalive on every connection (links both ways and clients): probes
/// start after this many idle seconds, repeat every `KEEPALIVE_INTERVAL_S`,
/// and `KEEPALIVE_PROBES` unanswered ones close the connection. A host that
/// vanished without closing (power loss, a partition) while the connection
/// was idle is noticed within about 16 s instead of never. (Linux probes
/// only idle connections; see `UNACKED_MS_MAX` for the others.)
pub const KEEPALIVE_IDLE_S: u32 = 10;
pub const KEEPALIVE_INTERVAL_S: u32 = 2;
pub const KEEPALIVE_PROBES: u32 = 3;

/// A connection whose sent data stays unacknowledged this long is closed
/// (TCP_USER_TIMEOUT; a link to a peer then reconnects). Without it, a host
/// that vanished while data was on its way keeps the connection, and a
/// blocked writer, for the kernel's ~15 minutes of retransmissions. Linux
/// applies it to keepalive probes too: it closes an idle connection once
/// this long passed without an ACK, so it must be longer than keepalive's
/// own idle + interval x probes (16 s), or one lost probe (at ~12 s with
/// 10 s) closes a healthy idle connection. Checked below.
pub const UNACKED_MS_MAX: u32 = 20_000;

// Every keepalive probe, and one interval more, fits in the user timeout.
const _: () = assert!(
    UNACKED_MS_MAX as u64
        >= (KEEPALIVE_IDLE_S as u64 + KEEPALIVE_INTERVAL_S as u64 * (KEEPALIVE_PROBES as u64 + 1))
            * 1000
);

/// A frame must have arrived whole this long after its first bytes; a
/// connection that sits inside one longer (a header, then silence) is
/// closed, with what it held.
pub const FRAME_DEADLINE_MS: u64 = 10_000;

/// Bytes a shard holds in partial frames, across all its connections. Past
/// it the shard stops receiving on client connections (and ones still in
/// their handshake) until the frames it holds complete or their
/// connections close; peer links keep receiving.
pub const SHARD_INPUT_BYTES_MAX: usize = 64 << 20;

/// Client connections one shard serves at once unless `--max-clients`
/// says otherwise; the next client's Hello is refused with a text naming
/// the limit.
pub const CLIENTS_PER_SHARD_DEFAULT: usize = 10_000;

/// A failed accept (out of descriptors, say) is tried again after a
/// delay that doubles from the first value to the second, back to the
/// first after an accept succeeds; failures are logged at most once per
/// `ACCEPT_FAILURE_LOG_MS`, with their count.
pub const ACCEPT_RETRY_MS_MIN: u64 = 10;
pub const ACCEPT_RETRY_MS_MAX: u64 = 1_000;
pub const ACCEPT_FAILURE_LOG_MS: u64 = 10_000;

/// How long a stopping replica (SIGTERM) waits for the answers to requests
/// it already received before it refuses the rest (`Unavailable`) and
/// exits. A second signal exits at once.
pub const STOP_DRAIN_MS: u64 = 5_000;

/// Capacity of a written send buffer kept for reuse, at most: reuse saves
/// faulting pages in for every write, but a burst must not pin its peak
/// (up to the 64 MiB limits below, twice) for the connection's life.
pub const SEND_BUFFER_KEPT_BYTES_MAX: usize = 4 << 20;

/// How long a starting replica retries a listening address that is in use.
pub const BIND_RETRY_MS: u64 = 5_000;

/// How often a shard's loop looks at the stop flag while idle.
pub const STOP_CHECK_MS: u64 = 50;

/// How far a client's request numbers may run ahead of the oldest one it still
/// waits for. The exactly-once table keeps one result per number in this window.
pub const CLIENT_WINDOW_REQUESTS_MAX: u64 = 1024;

/// A client session no command of which executed for this long is
/// dropped (by an `Op::Expire` command, so at every replica at the same
/// point of the order); `--session-idle-s` sets it.
pub const SESSION_IDLE_NS_DEFAULT: u64 = 300 * 1_000_000_000;

/// Most client sessions one shard keeps; past it the least recently used
/// are dropped, oldest first. `--sessions-max` sets it.
pub const SESSIONS_MAX_DEFAULT: usize = 100_000;

/// A read's result longer than this is not kept for retries: a retried copy
/// reads again, at its own place in the order (a read has no effect, so
/// that answer is as linearizable as the first). Bounds what one session
/// pins to `CLIENT_WINDOW_REQUESTS_MAX` times this.
pub const RESULT_KEPT_BYTES_MAX: usize = 1024;

/// A shard looks for sessions to expire this often, and, while it holds
/// more than `--sessions-max`, every `EXPIRE_OVER_CHECK_NS` (a look finds
/// nothing while the last one's expiries have not executed here:
/// `Replica::expire_sessions`). A look proposes at most
/// `EXPIRE_BATCHES_MAX` batches of `EXPIRE_BATCH_MAX` `Op::Expire`s: a
/// client churning through new ids at 300k a second is kept near the bound
/// (at 1,024 a look every 100 ms, 1.2 M new ids took a replica to 371 MB).
pub const EXPIRE_CHECK_NS: u64 = 100_000_000;
pub const EXPIRE_OVER_CHECK_NS: u64 = 1_000_000;
pub const EXPIRE_BATCH_MAX: usize = BATCH_COMMANDS_MAX;
pub const EXPIRE_BATCHES_MAX: usize = 16;

/// How far above its compaction base a slot of one replica may be. A slot
/// beyond this is a bug or a hostile peer: the core refuses to allocate for it.
pub const INSTANCE_WINDOW_SLOTS_MAX: u64 = 1 << 22;

/// Default time after which a command leader re-sends PreAccept, Accept or
/// Commit to peers that have not answered.
pub const RETRANSMIT_TIMEOUT_NS_DEFAULT: u64 = 20_000_000;

/// Default time an instance a replica waits on may stay uncommitted before
/// the replica recovers it. Each further attempt doubles it (up to 8x) and
/// adds a random part as large again, so recoverers do not duel.
pub const RECOVERY_TIMEOUT_NS_DEFAULT: u64 = 50_000_000;

const _: () = assert!(RECOVERY_TIMEOUT_NS_DEFAULT > RETRANSMIT_TIMEOUT_NS_DEFAULT);

/// Most re-sends and recovery starts one `tick` makes; past it the rest
/// wait `RESEND_PACE_NS`. A peer back from a pause (SIGSTOP, a long GC, a
/// stalled disk) is owed every commit of the pause at once; at 20k
/// commands/s for 5 s that was 30k commits in one turn, which held the
/// leader's clients and buried the peer (perf/RESULTS.md, issue 19). 32
/// a millisecond is 32k a second, far above what a healthy cluster re-sends.
pub const RESENDS_PER_PACE_MAX: u64 = 32;
/// A queue of the core's (an instance window, the re-send queue, parked
/// commits) whose capacity passes this and four times its length is
/// shrunk to twice its length: a backlog's peak is given back once it
/// drains.
pub const QUEUE_KEPT_SLOTS_MIN: usize = 4096;
pub const RESEND_PACE_NS: u64 = 1_000_000;

const _: () = assert!(RESENDS_PER_PACE_MAX > 0 && RESEND_PACE_NS < RETRANSMIT_TIMEOUT_NS_DEFAULT);
const _: () = assert!(REPLICAS_MAX >= 1 && REPLICAS_MAX % 2 == 1);
// Peer sets are u16 bitmasks.
const _: () = assert!(REPLICAS_MAX <= 16);
const _: () = assert!(BATCH_COMMANDS_MAX <= u32::MAX as usize);
// Key length travels as a u16, value length as a u32.
const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as usize);
// One PUT of the largest key and value fits in a batch, and a batch in a frame.
const _: () = assert!(32 + KEY_BYTES_MAX + VALUE_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(FRAME_BODY_BYTES_MAX <= u32::MAX as usize);

/// Log writes start and end on this boundary (O_DIRECT): a multiple of every
/// logical block size a log may sit on (512 or 4096).
pub const LOG_WRITE_ALIGN_BYTES: u64 = 4096;

/// A shard's log file has this much space allocated ahead of its last
/// entry (zeros written at open, fallocate after), extended by this much at
/// a time, so that a group commit never grows the file. (On ext4 here,
/// fdatasync of an append that grows the file costs an extra journal
/// commit: 0.27-0.34 ms against 0.16-0.19 ms for an overwrite.)
pub const LOG_PREALLOC_CHUNK_BYTES: u64 = 4 << 20;

const _: () = assert!(LOG_PREALLOC_CHUNK_BYTES % LOG_WRITE_ALIGN_BYTES == 0);

/// A shard reserves its own next slots this far ahead, in one log record,
/// renewed when fewer than half remain: a PreAccept for a reserved slot may
/// leave before the leader's own record of it is durable (see
/// `protocol::outbox`). A restart recovers the reserved slots never used.
pub const SLOT_RESERVATION_AHEAD: u64 = 32;

/// A log write not complete after this long stops the shard as a failed
/// write would: the disk hangs, and everything waiting on it would wait for
/// ever while memory grows.
pub const LOG_WRITE_STALL_MS: u64 = 30_000;

/// RESP (`--resp`) input bounds, as the binary frames' are bounded: a bulk
/// string is at most a value long; a command has at most this many
/// arguments (an MSET of `BATCH_COMMANDS_MAX` pairs and its name) and
/// this many bytes in all; an inline command line (`PING\r\n`) at most
/// this long. Past any of them the connection is answered
/// `-ERR Protocol error: ...` and closed, as Redis does. A command must
/// arrive whole within `FRAME_DEADLINE_MS`, and its bytes count against
/// the shard's `SHARD_INPUT_BYTES_MAX`.
pub const RESP_BULK_BYTES_MAX: usize = VALUE_BYTES_MAX;
pub const RESP_ARGS_MAX: usize = 2 * BATCH_COMMANDS_MAX + 1;
pub const RESP_COMMAND_BYTES_MAX: usize = BATCH_BYTES_MAX;
pub const RESP_INLINE_BYTES_MAX: usize = 64 << 10;

const _: () = assert!(RESP_BULK_BYTES_MAX <= RESP_COMMAND_BYTES_MAX);
const _: () = assert!(RESP_COMMAND_BYTES_MAX <= SHARD_INPUT_BYTES_MAX);
// Spans of the receive buffer are u32 offsets.
const _: () = assert!(RESP_COMMAND_BYTES_MAX + RESP_INLINE_BYTES_MAX <= u32::MAX as usize);
/// The metrics endpoint (`--metrics`): each shard copies its counters into
/// the block the endpoint reads at most this often, from its loop (never
/// per command). The loop wakes at least every `STOP_CHECK_MS`, so an idle
/// shard publishes on time too.
pub const METRICS_PUBLISH_MS: u64 = 250;

/// A shard that published nothing for this long is reported unhealthy:
/// its loop is stuck.
pub const METRICS_STALE_MS: u64 = 5_000;

/// HTTP connections the metrics endpoint serves at once, one thread each;
/// more wait in the listen backlog.
pub const METRICS_CONNECTIONS_MAX: usize = 4;

/// Longest request head (request line and headers) the endpoint reads;
/// past it the request is answered 431 and closed.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 << 10;

/// A request's head must arrive within this long of its connection, and
/// each write of the answer complete within it.
pub const METRICS_IO_TIMEOUT_MS: u64 = 2_000;

const _: () = assert!(STOP_CHECK_MS <= METRICS_PUBLISH_MS);
const _: () = assert!(4 * METRICS_PUBLISH_MS <= METRICS_STALE_MS);
const _: () = assert!(METRICS_CONNECTIONS_MAX > 0 && METRICS_REQUEST_BYTES_MAX >= 1024);
/// Bytes of the nonce each side of a peer handshake draws for it (128
/// bits: the runtime's, fresh per connection).
pub const HANDSHAKE_NONCE_BYTES: usize = 16;

/// Longest secret file (`--cluster-secret-file`, `--requirepass-file`,
/// blaster's `--password-file`), after its trailing newline is cut: a
/// password must fit in one `Auth` frame.
pub const SECRET_BYTES_MAX: usize = 1024;

/// Shortest cluster secret: its HMACs cross the network, so a short one
/// could be guessed offline from a recorded handshake.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;

/// Wrong passwords one client connection may send; the last one's answer
/// is followed by closing the connection.
pub const AUTH_FAILURES_PER_CONNECTION_MAX: u32 = 3;

/// Refused authentications (peers or clients) a shard logs per window;
/// past it they are counted, and the count is logged with the first
/// refusal of a later window, so a flood of bad handshakes cannot fill the
/// log.
pub const AUTH_FAILURE_LOGS_PER_WINDOW: u32 = 5;
pub const AUTH_FAILURE_LOG_WINDOW_MS: u64 = 10_000;

const _: () = assert!(SECRET_BYTES_MAX + 64 <= crate::wire::frame::SMALL_BODY_BYTES_MAX);
const _: () = assert!(CLUSTER_SECRET_BYTES_MIN <= SECRET_BYTES_MAX);
