//! `--history`: every operation of one load connection as a JSON line
//! (client, op, key, value, invoke_ns, return_ns, result), for offline
//! linearizability checking. A request sent again (after a reconnect, or an
//! `Overloaded` answer) is one operation, from its first send to its answer.

use std::time::Instant;

use epaxos_fast::constants::CLIENT_WINDOW_REQUESTS_MAX;
use epaxos_fast::wire::client::Code;

pub struct History {
    /// This connection's index in the run: the `client` of its lines (a
    /// small number any JSON reader takes exactly, unlike the random 64-bit
    /// client id).
    client: u64,
    /// When the run started (times count from it).
    epoch: Instant,
    /// Each outstanding request's operation, by number mod window.
    pending: Vec<Option<Invoked>>,
    /// The lines of the operations answered.
    lines: Vec<String>,
}

struct Invoked {
    put: bool,
    key: Vec<u8>,
    value: Vec<u8>,
    at: Instant,
}

impl History {
    pub fn new(client: u64, epoch: Instant) -> History {
        History {
            client,
            epoch,
            pending: (0..CLIENT_WINDOW_REQUESTS_MAX).map(|_| None).collect(),
            lines: Vec::new(),
        }
    }

    /// Request `request` was queued at `at`: a PUT of `value`, or a GET.
    pub fn invoked(&mut self, request: u64, put: bool, key: &[u8], value: &[u8], at: Instant) {
        self.pending[slot(request)] = Some(Invoked {
            put,
            key: key.to_vec(),
            value: value.to_vec(),
            at,
        });
    }

    /// Request `request` was answered at `now`.
    pub fn answered(&mut self, request: u64, code: Code, value: &[u8], now: Instant) {
        if let Some(op) = self.pending[slot(request)].take() {
            let result = match code {
                Code::Done => "\"ok\"".to_string(),
                Code::Value => json_str(value),
                Code::NotFound => "null".to_string(),
                other => json_str(format!("error: {other:?}").as_bytes()),
            };
            let line = self.line(&op, Some(now), &result);
            self.lines.push(line);
        }
    }

    /// Every line: those answered, then those never answered (result
    /// unknown).
    pub fn lines(&mut self) -> Vec<String> {
        let mut lines = std::mem::take(&mut self.lines);
        let pending: Vec<Invoked> = self.pending.iter_mut().filter_map(Option::take).collect();
        for op in &pending {
            lines.push(self.line(op, None, "\"timeout\""));
        }
        lines
    }

    /// One operation as a JSON line: times in ns since the run started; a
    /// GET's result is the value read, `null` when the key had none.
    fn line(&self, op: &Invoked, done: Option<Instant>, result: &str) -> String {
        let invoke = op.at.saturating_duration_since(self.epoch).as_nanos();
        let ret = done.map_or("null".to_string(), |d| {
            d.saturating_duration_since(self.epoch)
                .as_nanos()
                .to_string()
        });
        format!(
            "{{\"client\": {}, \"op\": \"{}\", \"key\": {}, \"value\": {}, \"invoke_ns\": {invoke}, \"return_ns\": {ret}, \"result\": {result}}}",
            self.client,
            if op.put { "put" } else { "get" },
            json_str(&op.key),
            if op.put { json_str(&op.value) } else { "null".to_string() },
        )
    }
}

fn slot(request: u64) -> usize {
    (request % CLIENT_WINDOW_REQUESTS_MAX) as usize
}

fn json_str(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
