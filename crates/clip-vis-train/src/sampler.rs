//! The order records are drawn in: an endless stream of epochs, each a shuffled list of record
//! indices, either every record once (detectron2's `TrainingSampler`, used for the video
//! fine-tune) or each record repeated by its repeat factor (`RepeatFactorTrainingSampler`, the
//! LVIS image stage, threshold 0.001).
//!
//! Repeat factors (`repeat_factors_from_category_frequency`, SPEC §5): with `f_c` the fraction
//! of records that contain category `c`, `r_c = max(1, sqrt(t / f_c))`, and a record's factor
//! is the largest `r_c` of its categories (1 without any). Each epoch rounds every factor
//! stochastically (`floor(r) + [u < frac(r)]`) and shuffles the repeated list.
//!
//! The stream is a pure function of the seed: position `p` of the stream is always the same
//! record, whoever asks, so data-parallel workers share one stream and a resumed run continues
//! exactly where it stopped.

use std::sync::{Arc, Mutex};

use crate::data::TrainSource;
use crate::rng::Rng;

/// Which sampler.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SamplerKind {
    /// Every record once per epoch.
    Uniform,
    /// Records repeated by category frequency (`REPEAT_THRESHOLD`, 0.001 for LVIS).
    RepeatFactor {
        /// The threshold `t`.
        threshold: f64,
    },
}

/// An endless, seeded stream of record indices with random access by position.
#[derive(Debug)]
pub struct Sampler {
    factors: Option<Vec<f32>>,
    len: usize,
    seed: u64,
    /// Epoch start positions computed so far (`starts[e]` = first position of epoch `e`).
    cache: Mutex<EpochCache>,
}

#[derive(Debug, Default)]
struct EpochCache {
    starts: Vec<u64>,
    recent: Vec<(u64, Arc<Vec<usize>>)>,
}

/// Repeat factors of every record of `source` (detectron2's float32 values).
pub fn repeat_factors(source: &dyn TrainSource, threshold: f64) -> Vec<f32> {
    let n = source.len();
    let mut images_with = std::collections::HashMap::<u64, usize>::new();
    for i in 0..n {
        for &c in source.categories(i) {
            *images_with.entry(c).or_default() += 1;
        }
    }
    let category_factor = |c: u64| {
        let frequency = images_with[&c] as f64 / n as f64;
        (threshold / frequency).sqrt().max(1.0)
    };
    (0..n)
        .map(|i| {
            source
                .categories(i)
                .iter()
                .map(|&c| category_factor(c))
                .fold(1.0, f64::max) as f32
        })
        .collect()
}

impl Sampler {
    /// A sampler of `kind` over `source`.
    ///
    /// # Panics
    /// When `source` has no records (see [`Sampler::from_factors`]).
    pub fn new(kind: SamplerKind, source: &dyn TrainSource, seed: u64) -> Self {
        let factors = match kind {
            SamplerKind::Uniform => None,
            SamplerKind::RepeatFactor { threshold } => Some(repeat_factors(source, threshold)),
        };
        Self::from_factors(source.len(), factors, seed)
    }

    /// A sampler over `len` records with explicit repeat `factors` (`None`: every record once).
    ///
    /// # Panics
    /// When `len` is 0 or `factors` does not have `len` entries. Datasets refuse to open
    /// without records ([`crate::data`]), so this is a caller's bug, not bad data.
    pub fn from_factors(len: usize, factors: Option<Vec<f32>>, seed: u64) -> Self {
        assert!(len > 0, "a sampler needs records");
        if let Some(factors) = &factors {
            assert_eq!(factors.len(), len, "a repeat factor per record");
        }
        Self {
            factors,
            len,
            seed,
            cache: Mutex::new(EpochCache::default()),
        }
    }

    /// The record indices of epoch `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> Vec<usize> {
        let mut list = match &self.factors {
            None => (0..self.len).collect::<Vec<_>>(),
            Some(factors) => {
                let mut rounding = Rng::derive(self.seed, &[3, epoch, 0]);
                let mut list = Vec::with_capacity(factors.len() * 2);
                for (i, &r) in factors.iter().enumerate() {
                    let whole = r.trunc();
                    let repeats =
                        whole as usize + usize::from((rounding.uniform() as f32) < r - whole);
                    list.extend(std::iter::repeat_n(i, repeats));
                }
                list
            }
        };
        Rng::derive(self.seed, &[3, epoch, 1]).shuffle(&mut list);
        list
    }

    /// The record at stream position `position` (positions count from 0 over all epochs).
    pub fn at(&self, position: u64) -> usize {
        let mut cache = self.cache.lock().expect("sampler cache");
        if cache.starts.is_empty() {
            cache.starts.push(0);
        }
        // Extend the epoch boundaries until `position` falls inside a known epoch.
        loop {
            let e = cache.starts.len() - 1;
            let start = cache.starts[e];
            let list = self.cached(&mut cache, e as u64);
            let end = start + list.len() as u64;
            if position < end {
                // Find the epoch containing `position` (it may be an earlier one).
                let epoch = cache.starts.partition_point(|&s| s <= position) - 1;
                let list = self.cached(&mut cache, epoch as u64);
                return list[(position - cache.starts[epoch]) as usize];
            }
            cache.starts.push(end);
        }
    }

    fn cached(&self, cache: &mut EpochCache, epoch: u64) -> Arc<Vec<usize>> {
        if let Some((_, list)) = cache.recent.iter().find(|(e, _)| *e == epoch) {
            return list.clone();
        }
        let list = Arc::new(self.epoch(epoch));
        cache.recent.push((epoch, list.clone()));
        if cache.recent.len() > 3 {
            cache.recent.remove(0);
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "a repeat factor per record")]
    fn factors_of_another_length_are_a_documented_panic() {
        Sampler::from_factors(3, Some(vec![1.0; 2]), 0);
    }

    #[test]
    fn uniform_epochs_are_permutations() {
        let sampler = Sampler::from_factors(10, None, 5);
        let mut epoch = sampler.epoch(0);
        assert_ne!(epoch, (0..10).collect::<Vec<_>>());
        epoch.sort_unstable();
        assert_eq!(epoch, (0..10).collect::<Vec<_>>());
        assert_ne!(sampler.epoch(0), sampler.epoch(1));
    }

    #[test]
    fn positions_walk_through_epochs() {
        let sampler = Sampler::from_factors(7, Some(vec![1.0, 2.5, 1.0, 1.2, 1.0, 1.0, 3.0]), 9);
        let flat: Vec<usize> = (0..6).flat_map(|e| sampler.epoch(e)).collect();
        let fresh = Sampler::from_factors(7, Some(vec![1.0, 2.5, 1.0, 1.2, 1.0, 1.0, 3.0]), 9);
        // Random access in any order gives the concatenated epochs.
        for p in [40usize, 3, 0, 25, 41, 12] {
            assert_eq!(fresh.at(p as u64), flat[p], "position {p}");
        }
    }

    #[test]
    fn repeat_factors_follow_category_frequency() {
        // Category 9 is in 1 of 1000 records: r = sqrt(0.01 / 0.001) ≈ 3.16 for threshold 0.01.
        struct Cats(Vec<Vec<u64>>);
        impl TrainSource for Cats {
            fn path(&self) -> &std::path::Path {
                std::path::Path::new("cats")
            }
            fn len(&self) -> usize {
                self.0.len()
            }
            fn categories(&self, i: usize) -> &[u64] {
                &self.0[i]
            }
            fn pick(&self, _: usize, _: &mut Rng) -> crate::data::ImageRecord {
                unreachable!()
            }
            fn report(&self) -> &crate::data::DatasetReport {
                unreachable!()
            }
        }
        let mut records = vec![vec![1u64]; 1000];
        records[0] = vec![1, 9];
        records[1] = vec![];
        let factors = repeat_factors(&Cats(records), 0.01);
        assert!((factors[0] - 10f32.sqrt()).abs() < 1e-6);
        assert_eq!(factors[1], 1.0);
        assert_eq!(factors[2], 1.0);
        // Over many epochs record 0 appears ≈ 3.16 times per epoch.
        let sampler = Sampler::from_factors(1000, Some(factors), 1);
        let count: usize = (0..200)
            .map(|e| sampler.epoch(e).iter().filter(|&&i| i == 0).count())
            .sum();
        assert!((count as f64 / 200.0 - 10f64.sqrt()).abs() < 0.1, "{count}");
    }
}
