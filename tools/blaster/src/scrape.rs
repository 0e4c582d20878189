//! `--scrape-metrics S`: the local replicas run with `--metrics`, and a
//! thread GETs `/metrics` from each every S seconds while the run goes on,
//! so that what scraping costs the replicas shows in their CPU per command.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use epaxos_fast::harness::http_get;

const TIMEOUT: Duration = Duration::from_secs(2);
const STOP_CHECK: Duration = Duration::from_millis(20);

pub struct Scraper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, u64)>,
}

/// Starts scraping every address in `addrs` every `every`.
pub fn start(addrs: Vec<SocketAddr>, every: Duration) -> Scraper {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, 0);
        let mut next = Instant::now();
        while !flag.load(Ordering::Relaxed) {
            if Instant::now() < next {
                std::thread::sleep(STOP_CHECK);
                continue;
            }
            next += every;
            for &a in &addrs {
                match http_get(a, "/metrics", TIMEOUT) {
                    Ok((200, _)) => ok += 1,
                    Ok((status, _)) => {
                        failed += 1;
                        eprintln!("blaster: GET http://{a}/metrics: status {status}");
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("blaster: {e}");
                    }
                }
            }
        }
        (ok, failed)
    });
    Scraper { stop, thread }
}

impl Scraper {
    /// Stops scraping and says how it went.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failed) = self.thread.join().unwrap_or((0, 0));
        eprintln!("blaster: --scrape-metrics: {ok} scrapes answered, {failed} failed");
    }
}
