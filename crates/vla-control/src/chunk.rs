//! Action chunks: the actions one prediction gives for the coming action steps (one on the
//! token path, `num_actions_chunk` for OpenVLA-OFT), in a fixed-size value the control thread
//! copies without allocating, and the rules that decide which chunk step a tick executes
//! (ARCHITECTURE.md §17).

use crate::ACTION_DIM;

/// The longest chunk a result carries.
pub use vla_model::policy::MAX_CHUNK;

/// Up to [`MAX_CHUNK`] actions, the first executed first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActionChunk {
    steps: [[f32; ACTION_DIM]; MAX_CHUNK],
    len: usize,
}

impl ActionChunk {
    /// A chunk of one action (the token path).
    pub fn single(action: [f32; ACTION_DIM]) -> Self {
        let mut steps = [[0.0; ACTION_DIM]; MAX_CHUNK];
        steps[0] = action;
        Self { steps, len: 1 }
    }

    /// The chunk of `rows`, or `None` when there are none or more than [`MAX_CHUNK`].
    pub fn from_rows(rows: &[[f32; ACTION_DIM]]) -> Option<Self> {
        if rows.is_empty() || rows.len() > MAX_CHUNK {
            return None;
        }
        let mut steps = [[0.0; ACTION_DIM]; MAX_CHUNK];
        steps[..rows.len()].copy_from_slice(rows);
        Some(Self {
            steps,
            len: rows.len(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn steps(&self) -> &[[f32; ACTION_DIM]] {
        &self.steps[..self.len]
    }

    pub fn first(&self) -> &[f32; ACTION_DIM] {
        &self.steps[0]
    }

    pub(crate) fn steps_mut(&mut self) -> &mut [[f32; ACTION_DIM]] {
        &mut self.steps[..self.len]
    }
}

/// What executes when a new chunk arrives before the current one is used up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChunkOverlap {
    /// The new chunk replaces what is left of the current one; its first step starts at the
    /// tick it arrives, as a single action's does.
    Latest,
    /// Temporal ensembling (Zhao et al., ACT, 2023): each step executes the weighted mean of
    /// every chunk's action for that step, weight `exp(-decay · i)` for the `i`-th oldest
    /// chunk that covers it (the oldest weighs most).
    Ensemble { decay: f64 },
}

/// How chunks are requested and combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkSettings {
    pub overlap: ChunkOverlap,
    /// LeRobot's `chunk_size_threshold`: the next prediction is requested once the steps
    /// left of the newest chunk are at most this share of its length (at least one step), so
    /// that it arrives before the chunk runs out. 1 asks at every tick.
    pub size_threshold: f64,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        Self {
            overlap: ChunkOverlap::Latest,
            size_threshold: 0.5,
        }
    }
}

impl ChunkSettings {
    /// Steps left of a chunk of `len` at or below which the next one is requested.
    pub fn request_at_steps_left(&self, len: usize) -> u64 {
        let share = (self.size_threshold.clamp(0.0, 1.0) * len as f64).ceil() as u64;
        share.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_holds_one_to_max_chunk_rows() {
        assert!(ActionChunk::from_rows(&[]).is_none());
        assert!(ActionChunk::from_rows(&[[0.0; ACTION_DIM]; MAX_CHUNK + 1]).is_none());
        let rows: Vec<[f32; ACTION_DIM]> = (0..8).map(|i| [i as f32; ACTION_DIM]).collect();
        let chunk = ActionChunk::from_rows(&rows).unwrap_or(ActionChunk::single([9.0; 7]));
        assert_eq!(chunk.len(), 8);
        assert_eq!(chunk.steps(), &rows[..]);
        assert_eq!(ActionChunk::single([1.0; 7]).steps(), &[[1.0; 7]]);
    }

    #[test]
    fn the_threshold_asks_for_a_share_of_the_chunk_and_always_for_single_actions() {
        let half = ChunkSettings::default();
        assert_eq!(half.request_at_steps_left(8), 4);
        assert_eq!(half.request_at_steps_left(5), 3);
        assert_eq!(half.request_at_steps_left(1), 1);
        let never_early = ChunkSettings {
            size_threshold: 0.0,
            ..half
        };
        assert_eq!(never_early.request_at_steps_left(8), 1);
    }
}
