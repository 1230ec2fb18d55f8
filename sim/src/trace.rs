//! The trace of a run: one JSON object per line, each with the simulated time in
//! milliseconds (`t_ms`), what happened (`kind`) and, for broker events, the node.
//!
//! Written by hand (a few kinds of flat objects) rather than through a JSON library, so
//! the simulator keeps its dependencies few; `jq` and any JSON-lines reader take it.

use std::fmt::Write as _;

use lode_broker::observe::{BatchId, Event};

/// A JSON object being written.
pub struct Line(String);

impl Line {
    /// A line at `t_ms` of `kind`.
    #[must_use]
    pub fn new(t_ms: u64, kind: &str) -> Line {
        let mut s = String::with_capacity(96);
        let _ = write!(s, "{{\"t_ms\":{t_ms},\"kind\":");
        push_str(&mut s, kind);
        Line(s)
    }

    /// Adds a number.
    #[must_use]
    pub fn num(mut self, key: &str, value: i64) -> Line {
        let _ = write!(self.0, ",\"{key}\":{value}");
        self
    }

    /// Adds a string.
    #[must_use]
    pub fn str(mut self, key: &str, value: &str) -> Line {
        let _ = write!(self.0, ",\"{key}\":");
        push_str(&mut self.0, value);
        self
    }

    /// Adds a list of numbers.
    #[must_use]
    pub fn nums(mut self, key: &str, values: impl IntoIterator<Item = i64>) -> Line {
        let _ = write!(self.0, ",\"{key}\":[");
        for (i, v) in values.into_iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(self.0, "{sep}{v}");
        }
        self.0.push(']');
        self
    }

    /// Adds a list of strings.
    #[must_use]
    pub fn strs(mut self, key: &str, values: &[&str]) -> Line {
        let _ = write!(self.0, ",\"{key}\":[");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            push_str(&mut self.0, v);
        }
        self.0.push(']');
        self
    }

    /// Adds a boolean.
    #[must_use]
    pub fn flag(mut self, key: &str, value: bool) -> Line {
        let _ = write!(self.0, ",\"{key}\":{value}");
        self
    }

    /// Adds batches as `[[base,last,epoch,crc],...]`.
    #[must_use]
    pub fn batches(mut self, key: &str, batches: &[BatchId]) -> Line {
        let _ = write!(self.0, ",\"{key}\":[");
        for (i, b) in batches.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(
                self.0,
                "{sep}[{},{},{},{}]",
                b.base.0, b.last.0, b.epoch.0, b.crc
            );
        }
        self.0.push(']');
        self
    }

    /// The finished line.
    #[must_use]
    pub fn done(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The trace line of a broker event.
#[must_use]
pub fn event(t_ms: u64, node: i32, e: &Event) -> String {
    let tp = |kind: &str, topic: &str, partition: i32| {
        Line::new(t_ms, kind)
            .num("node", i64::from(node))
            .str("topic", topic)
            .num("partition", i64::from(partition))
    };
    match e {
        Event::Started => Line::new(t_ms, "started").num("node", i64::from(node)),
        Event::Probe { name } => Line::new(t_ms, "probe")
            .num("node", i64::from(node))
            .str("name", name),
        Event::Halted { reason } => Line::new(t_ms, "halted")
            .num("node", i64::from(node))
            .str("reason", reason),
        Event::Registered { epoch } => Line::new(t_ms, "registered")
            .num("node", i64::from(node))
            .num("epoch", *epoch),
        Event::QuorumRole { leader, epoch } => Line::new(t_ms, "quorum-role")
            .num("node", i64::from(node))
            .flag("leader", *leader)
            .num("epoch", i64::from(epoch.0)),
        Event::Opened {
            topic,
            partition,
            log_end,
            high_watermark,
            ..
        } => tp("opened", topic, *partition)
            .num("log_end", log_end.0)
            .num("hw", high_watermark.0),
        Event::Appended {
            topic,
            partition,
            batches,
            as_leader,
        } => tp("append", topic, *partition)
            .flag("as_leader", *as_leader)
            .batches("batches", batches),
        Event::Truncated {
            topic,
            partition,
            to,
            reason,
        } => tp("truncate", topic, *partition)
            .num("to", to.0)
            .str("reason", reason),
        Event::HighWatermark {
            topic,
            partition,
            high_watermark,
            leader_isr,
        } => {
            let l = tp("hw", topic, *partition).num("hw", high_watermark.0);
            match leader_isr {
                Some(isr) => l.nums("leader_isr", isr.iter().map(|b| i64::from(b.0))),
                None => l,
            }
        }
        Event::Leader {
            topic,
            partition,
            epoch,
            start,
        } => tp("leader", topic, *partition)
            .num("epoch", i64::from(epoch.0))
            .num("start", start.0),
        Event::Follower { topic, partition } => tp("follower", topic, *partition),
        Event::IsrProposed {
            topic,
            partition,
            isr,
            added,
        } => tp("isr-proposed", topic, *partition)
            .nums("isr", isr.iter().map(|b| i64::from(b.0)))
            .num("added", added.map_or(-1, |b| i64::from(b.0))),
        Event::Acked {
            topic,
            partition,
            last,
        } => tp("ack", topic, *partition).num("last", last.0),
        Event::Served {
            topic,
            partition,
            batches,
            high_watermark,
        } => tp("served", topic, *partition)
            .num("hw", high_watermark.0)
            .batches("batches", batches),
        Event::MetadataApplied { offset, digest } => Line::new(t_ms, "metadata")
            .num("node", i64::from(node))
            .num("offset", offset.0)
            .str("digest", &format!("{digest:016x}")),
        Event::PartitionChanged {
            topic,
            partition,
            state: s,
        } => {
            let ids =
                |v: &[lode_proto::BrokerId]| v.iter().map(|b| i64::from(b.0)).collect::<Vec<_>>();
            tp("partition-state", topic, *partition)
                .num("leader", s.leader.map_or(-1, |l| i64::from(l.0)))
                .num("leader_epoch", i64::from(s.leader_epoch.0))
                .num("partition_epoch", i64::from(s.partition_epoch))
                .nums("isr", ids(&s.isr))
                .nums("elr", ids(&s.elr))
                .flag("unclean", s.elected_unclean)
        }
    }
    .done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        let l = Line::new(5, "fault")
            .str("what", "a \"b\"\n\\")
            .nums("xs", [1, -2])
            .done();
        assert_eq!(
            l,
            r#"{"t_ms":5,"kind":"fault","what":"a \"b\"\n\\","xs":[1,-2]}"#
        );
    }
}
