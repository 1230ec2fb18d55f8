//! Committed offsets (consumer groups), checked on the group workload's history at the end
//! of a run:
//!
//! - **lost-commit**: a group's committed offset of a partition is a register, and every
//!   read of it (a member's OffsetFetch on joining, and one more after healing) returns
//!   the value of a commit that may still be current: one not refused by the group's
//!   fencing, invoked before the read completed, and not overwritten by a commit
//!   acknowledged before the read began that was invoked after it completed. A read of
//!   "nothing committed" after an acknowledged commit is a loss too. This is what an
//!   acknowledged commit surviving coordinator failover means; it is checked per read,
//!   not as full linearizability of the whole history (two reads may still see an
//!   unacknowledged commit appear and vanish between them).
//! - **resume-skip**: a member that takes a partition over at committed offset `c` first
//!   reads the first record at or after `c` that the final log holds (duplicates are
//!   allowed, skips not), and from there skips nothing and never goes back within its
//!   stint.
//! - **zombie-commit**: a commit acknowledged although a later generation of the same
//!   coordinator had already formed before it was sent: some member's join of a higher
//!   generation was answered before the commit was invoked (generations are compared per
//!   coordinator: a later one may number them again; its members' ids differ). The coordinator must have fenced it
//!   (ILLEGAL_GENERATION): a member of the old generation no longer owns what it commits
//!   (a paused or cut-off member coming back, Kafka's zombie consumer).
//!
//! Where the run allows loss of the topic's records (fsync=interval after a power loss),
//! what resume-skip finds is permitted; committed offsets themselves live in an
//! fsync=always topic, so lost-commit is never permitted.

use std::collections::{BTreeMap, BTreeSet};

use crate::groups::{CommitOutcome, GroupHistory};

/// Findings beyond this many per check are counted, not listed.
const LISTED_MAX: usize = 20;

/// Checks `h` against the final log (`partition -> offsets it holds`).
#[must_use]
pub fn check(
    h: &GroupHistory,
    final_log: &BTreeMap<i32, BTreeSet<i64>>,
    loss_allowed: bool,
) -> (Vec<String>, Vec<String>) {
    let mut violations = lost_commits(h);
    violations.extend(zombie_commits(h));
    violations.truncate(LISTED_MAX);
    let (skips, mut permitted) = (resume_skips(h, final_log), Vec::new());
    if loss_allowed {
        permitted.extend(
            skips
                .into_iter()
                .take(LISTED_MAX)
                .map(|s| format!("{s} (fsync=interval with a power loss)")),
        );
    } else {
        violations.extend(skips.into_iter().take(LISTED_MAX));
    }
    (violations, permitted)
}

fn zombie_commits(h: &GroupHistory) -> Vec<String> {
    h.commits
        .iter()
        .filter(|c| c.outcome == CommitOutcome::Ok)
        .filter_map(|c| {
            let (coordinator, generation) = &c.generation;
            let (_, later, at) = h
                .joins
                .iter()
                .filter(|(k, g, at)| k == coordinator && g > generation && *at < c.invoked_ms)
                .min_by_key(|(_, _, at)| *at)?;
            Some(format!(
                "zombie-commit: member {} committed {:?} in generation {generation} of coordinator {coordinator} (invoked at {} ms, acknowledged), but generation {later} had formed at {at} ms",
                c.member, c.offsets, c.invoked_ms
            ))
        })
        .collect()
}

fn lost_commits(h: &GroupHistory) -> Vec<String> {
    let mut out = Vec::new();
    for f in &h.fetches {
        for (part, got) in &f.got {
            // (value, invoked, completed or None while unknown) of every commit of `part`
            // that may have been applied.
            let writes: Vec<(i64, u64, Option<u64>)> = h
                .commits
                .iter()
                .filter(|c| c.outcome != CommitOutcome::Fail)
                .filter_map(|c| {
                    let v = c.offsets.iter().find(|(p, _)| p == part)?.1;
                    let done = (c.outcome == CommitOutcome::Ok).then_some(c.completed_ms);
                    Some((v, c.invoked_ms, done))
                })
                .collect();
            // Acknowledged before the read began.
            let acked_before: Vec<&(i64, u64, Option<u64>)> = writes
                .iter()
                .filter(|(_, _, done)| done.is_some_and(|d| d < f.invoked_ms))
                .collect();
            let current = |done: Option<u64>| {
                // Not overwritten: no commit acknowledged before the read was invoked after
                // this one completed.
                done.is_none_or(|d| !acked_before.iter().any(|(_, inv, _)| *inv > d))
            };
            let ok = match got {
                None => acked_before.is_empty(),
                Some(v) => writes
                    .iter()
                    .any(|(w, inv, done)| w == v && *inv <= f.completed_ms && current(*done)),
            };
            if ok {
                continue;
            }
            let latest = acked_before.iter().max_by_key(|(_, _, done)| *done).map_or(
                "none".to_owned(),
                |(v, inv, done)| {
                    format!(
                        "{v} (invoked at {inv} ms, acknowledged at {} ms)",
                        done.unwrap_or(0)
                    )
                },
            );
            let who = if f.member == u32::MAX {
                "the final read after healing".to_owned()
            } else {
                format!("member {}", f.member)
            };
            let what = got.map_or("nothing committed".to_owned(), |v| format!("offset {v}"));
            let never = match got {
                Some(v) if !writes.iter().any(|(w, _, _)| w == v) => {
                    " (a value no commit that may have applied wrote)"
                }
                _ => "",
            };
            out.push(format!(
                "lost-commit: {who} read {what}{never} for partition {part} (read invoked at {} ms, answered at {} ms); the latest commit acknowledged before was {latest}",
                f.invoked_ms, f.completed_ms
            ));
        }
    }
    out
}

fn resume_skips(h: &GroupHistory, final_log: &BTreeMap<i32, BTreeSet<i64>>) -> Vec<String> {
    let empty = BTreeSet::new();
    let mut out = Vec::new();
    for s in &h.stints {
        let log = final_log.get(&s.partition).unwrap_or(&empty);
        let Some(first) = s.read.first() else {
            continue;
        };
        let expected = log.range(s.from..).next();
        if *first < s.from || expected.is_some_and(|e| e < first) {
            out.push(format!(
                "resume-skip: member {} resumed partition {} at committed offset {} ({} ms) and first read offset {first}; the first record at or after it is at {}",
                s.member,
                s.partition,
                s.from,
                s.at_ms,
                expected.map_or("none".to_owned(), ToString::to_string)
            ));
            continue;
        }
        for w in s.read.windows(2) {
            let skipped: Vec<i64> = if w[1] > w[0] {
                log.range(w[0] + 1..w[1]).copied().collect()
            } else {
                Vec::new()
            };
            if w[1] <= w[0] || !skipped.is_empty() {
                out.push(format!(
                    "resume-skip: member {} (stint from offset {} of partition {} at {} ms) read offset {} right after {}, skipping {skipped:?}",
                    s.member, s.from, s.partition, s.at_ms, w[1], w[0]
                ));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::{Commit, Fetch, Stint};

    fn commit(offset: i64, invoked_ms: u64, completed_ms: u64, outcome: CommitOutcome) -> Commit {
        Commit {
            member: 0,
            generation: ("c".into(), 1),
            offsets: vec![(0, offset)],
            invoked_ms,
            completed_ms,
            outcome,
        }
    }

    fn read(got: Option<i64>, invoked_ms: u64, completed_ms: u64) -> Fetch {
        Fetch {
            member: 1,
            got: vec![(0, got)],
            invoked_ms,
            completed_ms,
        }
    }

    fn lost(commits: Vec<Commit>, fetches: Vec<Fetch>) -> Vec<String> {
        lost_commits(&GroupHistory {
            commits,
            fetches,
            ..GroupHistory::default()
        })
    }

    #[test]
    fn a_commit_acknowledged_after_a_later_generation_formed_is_a_zombie() {
        let h = |invoked_ms, outcome| GroupHistory {
            commits: vec![Commit {
                invoked_ms,
                ..commit(10, invoked_ms, invoked_ms + 5, outcome)
            }],
            // A later coordinator numbering from one again is no later generation.
            joins: vec![
                ("c".into(), 1, 0),
                ("d".into(), 5, 10),
                ("c".into(), 2, 100),
            ],
            ..GroupHistory::default()
        };
        assert!(
            zombie_commits(&h(50, CommitOutcome::Ok)).is_empty(),
            "before"
        );
        assert_eq!(zombie_commits(&h(150, CommitOutcome::Ok)).len(), 1, "after");
        assert!(
            zombie_commits(&h(150, CommitOutcome::Fail)).is_empty(),
            "fenced, as it must be"
        );
    }

    #[test]
    fn an_overwritten_commit_read_back_is_lost() {
        let commits = vec![
            commit(10, 0, 5, CommitOutcome::Ok),
            commit(20, 10, 15, CommitOutcome::Ok),
        ];
        assert!(lost(commits.clone(), vec![read(Some(20), 20, 25)]).is_empty());
        let v = lost(commits.clone(), vec![read(Some(10), 20, 25)]);
        assert!(v[0].starts_with("lost-commit"), "{v:?}");
        assert_eq!(lost(commits, vec![read(None, 20, 25)]).len(), 1);
    }

    #[test]
    fn concurrent_and_unknown_commits_may_be_read_either_way() {
        // 20 was invoked before 10 completed: either may be current.
        let commits = vec![
            commit(10, 0, 15, CommitOutcome::Ok),
            commit(20, 5, 12, CommitOutcome::Ok),
            commit(30, 16, 40, CommitOutcome::Info),
        ];
        for got in [10, 20, 30] {
            assert!(lost(commits.clone(), vec![read(Some(got), 20, 25)]).is_empty());
        }
        // A refused commit is never read; nor is a value nobody wrote.
        let refused = vec![commit(40, 0, 5, CommitOutcome::Fail)];
        assert_eq!(lost(refused, vec![read(Some(40), 20, 25)]).len(), 1);
        assert_eq!(lost(Vec::new(), vec![read(Some(7), 20, 25)]).len(), 1);
        assert!(lost(Vec::new(), vec![read(None, 20, 25)]).is_empty());
    }

    #[test]
    fn a_resume_must_start_at_the_first_record_at_or_after_the_commit() {
        let log = BTreeMap::from([(0, (0..10).collect::<BTreeSet<i64>>())]);
        let stint = |from, read: &[i64]| GroupHistory {
            stints: vec![Stint {
                member: 0,
                partition: 0,
                from,
                read: read.to_vec(),
                at_ms: 0,
            }],
            ..GroupHistory::default()
        };
        assert!(resume_skips(&stint(4, &[4, 5, 6]), &log).is_empty());
        assert_eq!(resume_skips(&stint(4, &[5, 6]), &log).len(), 1);
        assert_eq!(resume_skips(&stint(4, &[4, 6]), &log).len(), 1);
        assert_eq!(resume_skips(&stint(4, &[3, 4]), &log).len(), 1);
        assert_eq!(resume_skips(&stint(4, &[4, 5, 5]), &log).len(), 1);
        let (v, p) = check(&stint(4, &[5]), &log, true);
        assert!(v.is_empty() && p.len() == 1);
    }
}
