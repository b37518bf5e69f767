//! Many commands for one backend, sent as one pipeline per member (a
//! partition's members, or the one server), their replies put back in the
//! order the commands were given.

use redis::{Cmd, Pipeline, Value};

use super::Connection;

/// Commands grouped by the member they go to.
pub(crate) struct Batch {
    /// Per member with commands: the member, its pipeline (errors kept as
    /// replies), and the position of each of its commands in the batch.
    pipelines: Vec<(usize, Pipeline, Vec<usize>)>,
    len: usize,
}

impl Connection {
    /// Groups `items` (member, command) into one pipeline per member.
    pub(crate) fn batch(&self, items: Vec<(usize, Cmd)>) -> Batch {
        let members = self.members();
        let len = items.len();
        let mut pipelines: Vec<(usize, Pipeline, Vec<usize>)> = Vec::new();
        for (i, (member, cmd)) in items.into_iter().enumerate() {
            let member = member.min(members - 1);
            let at = match pipelines.iter().position(|(m, _, _)| *m == member) {
                Some(at) => at,
                None => {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    pipelines.push((member, pipe, Vec::new()));
                    pipelines.len() - 1
                }
            };
            let (_, pipe, order) = &mut pipelines[at];
            pipe.add_command(cmd);
            order.push(i);
        }
        Batch { pipelines, len }
    }
}

impl Batch {
    /// Each member's pipeline, to be sent concurrently.
    pub(crate) fn pipelines(&self) -> impl Iterator<Item = (usize, &Pipeline)> {
        self.pipelines.iter().map(|(member, pipe, _)| (*member, pipe))
    }

    /// The replies in the order the commands were given, from each
    /// pipeline's replies in the order of [`pipelines`](Self::pipelines).
    pub(crate) fn replies<E>(&self, per_pipeline: Vec<Result<Vec<Value>, E>>) -> Result<Vec<Value>, E> {
        let mut out = vec![Value::Nil; self.len];
        for ((_, _, order), replies) in self.pipelines.iter().zip(per_pipeline) {
            for (&i, value) in order.iter().zip(replies?) {
                out[i] = value;
            }
        }
        Ok(out)
    }
}
