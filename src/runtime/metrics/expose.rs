//! What a scrape makes of the published blocks: the Prometheus text
//! exposition (`prometheus-client`'s encoder, version 0.0.4 of the text
//! format) and the health verdict. Runs on the endpoint's threads only.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{
    Hist, Metrics, Scalar, ShardBlock, Type, STATE_FAILED, STATE_MISCONFIGURED, STATE_PROBATION,
    STATE_STOPPING,
};
use crate::constants::{METRICS_STALE_MS, REPLICAS_MAX};
use crate::histogram::{Commands, Nanos, Scale, BUCKETS_MAX};

/// The `Content-Type` of [`text`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a scrape read of one shard's block.
#[derive(Clone, Debug)]
struct View {
    shard: usize,
    /// Milliseconds since the block's last publish; `None`: never.
    age_ms: Option<u64>,
    ended: bool,
    state: u8,
    why: String,
    scalars: [u64; Scalar::ALL.len()],
    links: [bool; REPLICAS_MAX],
    hists: [([u64; BUCKETS_MAX], u64); Hist::ALL.len()],
}

impl View {
    fn read(m: &Metrics, shard: usize, now_ms: u64) -> View {
        let b: &ShardBlock = &m.shards[shard];
        let published = b.published_ms.load(Relaxed);
        View {
            shard,
            age_ms: (published > 0).then(|| now_ms.saturating_sub(published - 1)),
            ended: b.ended.load(Relaxed),
            state: b.state.load(Relaxed),
            why: b.why.lock().map(|w| w.clone()).unwrap_or_default(),
            scalars: std::array::from_fn(|i| b.scalars[i].load(Relaxed)),
            links: std::array::from_fn(|i| b.links[i].load(Relaxed)),
            hists: std::array::from_fn(|i| {
                let h = &b.hists[i];
                (
                    std::array::from_fn(|j| h.counts[j].load(Relaxed)),
                    h.sum.load(Relaxed),
                )
            }),
        }
    }

    fn scalar(&self, s: Scalar) -> u64 {
        self.scalars[s as usize]
    }

    /// Why this shard cannot take writes with a quorum, if it cannot.
    fn trouble(&self, replicas: usize) -> Option<String> {
        let s = self.shard;
        let Some(age) = self.age_ms else {
            return Some(format!("shard {s}: starting (nothing published yet)"));
        };
        if self.ended {
            return Some(format!("shard {s}: stopped"));
        }
        if age > METRICS_STALE_MS {
            return Some(format!(
                "shard {s}: published nothing for {age} ms (its loop is stuck)"
            ));
        }
        let why = |what: &str| {
            let detail = if self.why.is_empty() { "" } else { ": " };
            Some(format!("shard {s}: {what}{detail}{}", self.why))
        };
        if self.state & (STATE_FAILED | STATE_MISCONFIGURED) != 0 {
            return why("refuses writes");
        }
        if self.state & STATE_PROBATION != 0 {
            return Some(format!(
                "shard {s}: on probation (started empty; waits for a majority of its peers \
                 to say they hold nothing of its instance space)"
            ));
        }
        if self.state & STATE_STOPPING != 0 {
            return Some(format!("shard {s}: stopping (refuses new requests)"));
        }
        let f = (replicas - 1) / 2;
        let up = self.scalar(Scalar::PeerLinksUp) as usize;
        if up < f {
            return Some(format!(
                "shard {s}: no quorum: {up} of its {} peer links up, a quorum of {} \
                 replicas needs {f}",
                replicas - 1,
                f + 1
            ));
        }
        None
    }
}

fn views(m: &Metrics) -> Vec<View> {
    let now = m.now_ms();
    (0..m.shards()).map(|s| View::read(m, s, now)).collect()
}

/// `Ok` when every shard has a quorum of links up (F + 1 replicas with
/// itself) and takes writes; otherwise one line per shard that does not,
/// naming it and why.
pub fn health(m: &Metrics) -> Result<(), String> {
    let troubles: Vec<String> = views(m)
        .iter()
        .filter_map(|v| v.trouble(m.replicas))
        .collect();
    if troubles.is_empty() {
        Ok(())
    } else {
        Err(troubles.join("\n"))
    }
}

/// Every published number, in the Prometheus text format.
pub fn text(m: &Arc<Metrics>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(m.clone())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The collector a scrape's registry holds: reads the blocks and encodes
/// every metric, a sample per shard (and per peer for the links).
#[derive(Debug)]
struct Scrape(Arc<Metrics>);

type Enc<'a> = DescriptorEncoder<'a>;

impl Collector for Scrape {
    fn encode(&self, mut enc: Enc<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let views: Vec<View> = views(m)
            .into_iter()
            .filter(|v| v.age_ms.is_some())
            .collect();
        for s in Scalar::ALL {
            encode_scalar(&mut enc, s, &views)?;
        }
        encode_links(&mut enc, m, &views)?;
        let healthy: Vec<(String, u64)> = views
            .iter()
            .map(|v| {
                (
                    v.shard.to_string(),
                    u64::from(v.trouble(m.replicas).is_none()),
                )
            })
            .collect();
        let name = "epaxos_shard_healthy";
        let help = "1 when this shard has a quorum of links up and takes writes (what /health checks), else 0.";
        let mut e = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (shard, ok) in &healthy {
            ConstGauge::new(*ok as i64).encode(e.encode_family(&[("shard", shard.as_str())])?)?;
        }
        for h in Hist::ALL {
            encode_hist(&mut enc, h, &views)?;
        }
        Ok(())
    }
}

fn encode_scalar(enc: &mut Enc<'_>, s: Scalar, views: &[View]) -> Result<(), std::fmt::Error> {
    let (name, ty, help) = s.spec();
    let name = format!("epaxos_{name}");
    let (unit, kind) = match ty {
        Type::Counter => (None, MetricType::Counter),
        Type::CounterBytes => (Some(Unit::Bytes), MetricType::Counter),
        Type::Gauge => (None, MetricType::Gauge),
    };
    let mut e = enc.encode_descriptor(&name, help, unit.as_ref(), kind)?;
    for v in views {
        let shard = v.shard.to_string();
        let labels = [("shard", shard.as_str())];
        let value = v.scalar(s);
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(e.encode_family(&labels)?)?,
            _ => ConstGauge::new(value as i64).encode(e.encode_family(&labels)?)?,
        }
    }
    Ok(())
}

fn encode_links(enc: &mut Enc<'_>, m: &Metrics, views: &[View]) -> Result<(), std::fmt::Error> {
    let help = "1 while this shard's link to the peer is up, else 0.";
    let mut e = enc.encode_descriptor("epaxos_peer_link_up", help, None, MetricType::Gauge)?;
    for v in views {
        let shard = v.shard.to_string();
        for p in (0..m.replicas).filter(|&p| p != usize::from(m.replica)) {
            let peer = p.to_string();
            let labels = [("shard", shard.as_str()), ("peer", peer.as_str())];
            ConstGauge::new(i64::from(v.links[p])).encode(e.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn encode_hist(enc: &mut Enc<'_>, h: Hist, views: &[View]) -> Result<(), std::fmt::Error> {
    let (name, time, help) = h.spec();
    let name = format!("epaxos_{name}");
    let (bounds, scale) = if time {
        (Nanos::BOUNDS, 1e-9)
    } else {
        (Commands::BOUNDS, 1.0)
    };
    let unit = time.then_some(Unit::Seconds);
    let mut e = enc.encode_descriptor(&name, help, unit.as_ref(), MetricType::Histogram)?;
    for v in views {
        let (counts, sum) = &v.hists[h as usize];
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .zip(counts)
            .map(|(&b, &n)| {
                let le = if b == u64::MAX {
                    f64::INFINITY
                } else {
                    b as f64 * scale
                };
                (le, n)
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let shard = v.shard.to_string();
        let labels = [("shard", shard.as_str())];
        let mut family = e.encode_family(&labels)?;
        family.encode_histogram::<NoLabelSet>(*sum as f64 * scale, count, &buckets, None)?;
    }
    Ok(())
}
