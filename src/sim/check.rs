//! Checkers for what every replica observed: agreement and execution order.
//! (Linearizability of what clients observed is in `linearizability.rs`.)
//!
//! They work on plain logs, so tests can hand them broken logs and show that
//! each violation is caught.

use std::collections::{BTreeMap, HashMap};

use crate::command::Batch;
use crate::protocol::{Attrs, InstanceId};
use crate::state_machine::{Access, KvStore, StateMachine};

/// What one replica reported, in the order it reported it.
#[derive(Clone, Debug, Default)]
pub struct ReplicaLog {
    /// Instances as they committed here, with their final attributes.
    pub committed: Vec<(InstanceId, Attrs, Batch)>,
    /// Instances in the order they executed here, each with the number of
    /// entries `committed` had when it executed (its commit must be among them).
    pub executed: Vec<(InstanceId, usize)>,
}

/// Agreement: an instance committed at several replicas has the same batch,
/// seq and deps at all of them. Also: nothing commits twice at one replica.
pub fn check_agreement(logs: &[ReplicaLog]) -> Result<(), String> {
    let mut first: HashMap<InstanceId, (usize, Attrs, &Batch)> = HashMap::new();
    for (r, log) in logs.iter().enumerate() {
        let mut here = HashMap::new();
        for (id, attrs, batch) in &log.committed {
            if here.insert(*id, ()).is_some() {
                return Err(format!(
                    "agreement: instance {id} committed twice at replica {r}"
                ));
            }
            match first.get(id) {
                None => {
                    first.insert(*id, (r, *attrs, batch));
                }
                Some((r0, attrs0, batch0)) => {
                    if attrs0 != attrs || *batch0 != batch {
                        return Err(format!(
                            "agreement: instance {id} committed at replica {r0} with seq {} deps {:?} \
                             ({} commands) but at replica {r} with seq {} deps {:?} ({} commands)",
                            attrs0.seq,
                            attrs0.deps.0,
                            batch0.len(),
                            attrs.seq,
                            attrs.deps.0,
                            batch.len()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// One executed command as the order checker sees it: which instance and
/// position, and how it used its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Executed {
    id: InstanceId,
    position: u32,
    access: Access,
}

/// Execution order: two conflicting commands executed at two replicas ran
/// in the same relative order at both. Per key, the writes must form one
/// sequence (each replica's a prefix of the longest), and each read must
/// come after the same number of writes everywhere. Also: an instance
/// executes once per replica, and only after it committed there.
pub fn check_execution_order(logs: &[ReplicaLog]) -> Result<(), String> {
    let mut per_replica: Vec<BTreeMap<Vec<u8>, Vec<Executed>>> = Vec::new();
    for (r, log) in logs.iter().enumerate() {
        let commits: HashMap<InstanceId, (usize, &Batch)> = log
            .committed
            .iter()
            .enumerate()
            .map(|(i, (id, _, b))| (*id, (i, b)))
            .collect();
        let mut seen = HashMap::new();
        let mut keys: BTreeMap<Vec<u8>, Vec<Executed>> = BTreeMap::new();
        for (id, commits_before) in &log.executed {
            let batch = match commits.get(id) {
                Some(&(at, batch)) if at < *commits_before => batch,
                _ => {
                    return Err(format!(
                        "order: replica {r} executed {id} before committing it"
                    ))
                }
            };
            if seen.insert(*id, ()).is_some() {
                return Err(format!("order: replica {r} executed {id} twice"));
            }
            for (position, cmd) in batch.iter().enumerate() {
                if let Some((key, access)) = KvStore::conflict_key(&cmd) {
                    keys.entry(key.to_vec()).or_default().push(Executed {
                        id: *id,
                        position: position as u32,
                        access,
                    });
                }
            }
        }
        per_replica.push(keys);
    }
    let all_keys: std::collections::BTreeSet<&Vec<u8>> =
        per_replica.iter().flat_map(|k| k.keys()).collect();
    for key in all_keys {
        check_key_order(key, &per_replica)?;
    }
    Ok(())
}

fn check_key_order(
    key: &[u8],
    per_replica: &[BTreeMap<Vec<u8>, Vec<Executed>>],
) -> Result<(), String> {
    let empty = Vec::new();
    // The longest write sequence is the reference; every other is a prefix.
    let mut reference: Vec<(InstanceId, u32)> = Vec::new();
    let mut reference_replica = 0;
    let mut reads_after: HashMap<(InstanceId, u32), (usize, usize)> = HashMap::new();
    for (r, keys) in per_replica.iter().enumerate() {
        let ops = keys.get(key).unwrap_or(&empty);
        let writes: Vec<(InstanceId, u32)> = ops
            .iter()
            .filter(|e| e.access == Access::Write)
            .map(|e| (e.id, e.position))
            .collect();
        let common = writes.len().min(reference.len());
        if let Some(i) = (0..common).find(|&i| writes[i] != reference[i]) {
            return Err(format!(
                "order: key {:?}: write #{i} is {}[{}] at replica {reference_replica} but {}[{}] at replica {r}",
                String::from_utf8_lossy(key),
                reference[i].0,
                reference[i].1,
                writes[i].0,
                writes[i].1
            ));
        }
        if writes.len() > reference.len() {
            reference = writes;
            reference_replica = r;
        }
        let mut writes_before = 0;
        for e in ops {
            match e.access {
                Access::Write => writes_before += 1,
                Access::Read => {
                    let at = (e.id, e.position);
                    match reads_after.get(&at) {
                        None => {
                            reads_after.insert(at, (r, writes_before));
                        }
                        Some(&(r0, n0)) if n0 != writes_before => {
                            return Err(format!(
                                "order: key {:?}: read {}[{}] follows {n0} writes at replica {r0} \
                                 but {writes_before} at replica {r}",
                                String::from_utf8_lossy(key),
                                e.id,
                                e.position
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    Ok(())
}

/// Completeness, for a run that drained: every replica committed and
/// executed every instance committed anywhere, and nothing else.
pub fn check_all_executed(logs: &[ReplicaLog]) -> Result<(), String> {
    let all: std::collections::BTreeSet<InstanceId> = logs
        .iter()
        .flat_map(|l| l.committed.iter().map(|(id, _, _)| *id))
        .collect();
    for (r, log) in logs.iter().enumerate() {
        let executed: std::collections::BTreeSet<InstanceId> =
            log.executed.iter().map(|(id, _)| *id).collect();
        if let Some(missing) = all.iter().find(|id| !executed.contains(id)) {
            return Err(format!(
                "completeness: replica {r} executed {} of {} committed instances (first missing: {missing})",
                executed.len(),
                all.len()
            ));
        }
    }
    Ok(())
}
