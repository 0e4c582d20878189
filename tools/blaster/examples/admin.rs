//! One line of counters per replica (shard 0), for scripts that watch a
//! cluster while something happens to it (`tools/pause-probe.sh`).
//!
//! `admin ADDR...` (base addresses, cluster id 1). A replica that does not
//! answer within 2 s gets a line saying so; the exit status is 0 either way.

use std::net::SocketAddr;
use std::time::Duration;

use epaxos_fast::client::Connection;

fn main() {
    for (r, raw) in std::env::args().skip(1).enumerate() {
        let Ok(addr) = raw.parse::<SocketAddr>() else {
            eprintln!("admin: bad address {raw:?}");
            std::process::exit(2);
        };
        match Connection::connect(addr, 0, 1, Duration::from_secs(2)).and_then(|mut c| c.admin()) {
            Ok(i) => println!(
                "replica {r}: retransmits {} recoveries {} dropped {} instances_in_memory {} \
                 frames_in {} frames_out {} MB_in {} MB_out {} executed {}",
                i.retransmits.get(),
                i.recoveries.get(),
                i.dropped_messages.get(),
                i.instances_in_memory.get(),
                i.frames_in.get(),
                i.frames_out.get(),
                i.bytes_in.get() >> 20,
                i.bytes_out.get() >> 20,
                i.executed_instances.get(),
            ),
            Err(e) => println!("replica {r}: no counters: {e}"),
        }
    }
}
