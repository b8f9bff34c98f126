//! Constructed videos where matching only the previous frame goes wrong and stays wrong, while
//! the top-K vote over the memory recovers.

use clip_vis_matching::{
    AdjacentMatcher, MatchConfig, MatchError, Strategy, TemporalMatcher, TopKMatcher,
};

const QUERIES: usize = 10;
const DIM: usize = 16;

/// A small deterministic normal generator (xorshift64* + Box-Muller), so the videos are fixed.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    fn sample(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }

    fn vector(&mut self, scale: f32) -> Vec<f32> {
        (0..DIM).map(|_| self.sample() * scale).collect()
    }

    /// A random order of `0..n` (Fisher-Yates).
    fn shuffle(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.uniform() * (i + 1) as f32) as usize % (i + 1);
            order.swap(i, j);
        }
        order
    }
}

/// A video of `frames` frames: every object keeps a base embedding plus small noise, and each
/// frame lists the objects in a random order. `corrupt(frame, object)` says whether that
/// object's query is replaced by a random embedding in that frame (a noisy frame, or an object
/// that is not visible). Returns, per frame, the embeddings and which object each query is.
fn video(
    seed: u64,
    frames: usize,
    corrupt: impl Fn(usize, usize) -> bool,
) -> Vec<(Vec<f32>, Vec<usize>)> {
    let mut rng = Normal(seed);
    let bases: Vec<Vec<f32>> = (0..QUERIES).map(|_| rng.vector(1.0)).collect();
    (0..frames)
        .map(|f| {
            let order = rng.shuffle(QUERIES);
            let mut rows = Vec::with_capacity(QUERIES * DIM);
            for &object in &order {
                let noise = rng.vector(if corrupt(f, object) { 3.0 } else { 0.3 });
                let keep = if corrupt(f, object) { 0.0 } else { 1.0 };
                rows.extend(bases[object].iter().zip(&noise).map(|(b, n)| keep * b + n));
            }
            (rows, order)
        })
        .collect()
}

/// Which object each track follows, frame by frame.
fn run(matcher: &mut dyn TemporalMatcher, video: &[(Vec<f32>, Vec<usize>)]) -> Vec<Vec<usize>> {
    video
        .iter()
        .map(|(rows, objects)| {
            let perm = matcher.assign(rows, DIM).unwrap();
            perm.iter().map(|&q| objects[q]).collect()
        })
        .collect()
}

/// Frames (other than `except`) whose tracks do not follow the first frame's objects.
fn wrong_frames(tracks: &[Vec<usize>], except: &[usize]) -> Vec<usize> {
    (0..tracks.len())
        .filter(|f| !except.contains(f) && tracks[*f] != tracks[0])
        .collect()
}

#[test]
fn a_mix_up_at_noisy_frames_propagates_with_adjacent_matching_only() {
    // Frames 5 and 6 are pure noise for every object (a blur, a cut): any matcher mixes the
    // tracks up there. (One noisy frame is not enough: matching noise to the clean frames on
    // both sides solves the same problem twice and undoes itself.)
    let noisy = [5, 6];
    let clip = video(7, 16, |f, _| noisy.contains(&f));
    let adjacent = run(&mut AdjacentMatcher::new(), &clip);
    // The one-frame memory now holds noise, and the mix-up is carried to the end.
    let wrong = wrong_frames(&adjacent, &noisy);
    assert_eq!(wrong, (7..16).collect::<Vec<_>>(), "adjacent: {adjacent:?}");
    // The top-K vote rests on the clean frames still in memory and recovers at once.
    let topk = run(&mut TopKMatcher::new(MatchConfig::PAPER).unwrap(), &clip);
    assert!(wrong_frames(&topk, &noisy).is_empty(), "top-K: {topk:?}");
    let long_term = run(&mut clip_vis_matching::LongTermMatcher::new(), &clip);
    assert!(
        wrong_frames(&long_term, &noisy).is_empty(),
        "long-term: {long_term:?}"
    );
}

#[test]
fn objects_that_disappear_and_reappear_get_their_tracks_back() {
    // Objects 2, 3, 6 and 8 are out of view at frames 4 and 5 (their queries hold noise).
    let hidden = |f: usize, o: usize| (4..=5).contains(&f) && [2, 3, 6, 8].contains(&o);
    let clip = video(11, 14, hidden);
    let topk = run(&mut TopKMatcher::new(MatchConfig::PAPER).unwrap(), &clip);
    // While hidden, their tracks hold arbitrary queries; once back, every track is right.
    for f in 6..14 {
        assert_eq!(topk[f], topk[0], "top-K, frame {f}");
    }
    let adjacent = run(&mut AdjacentMatcher::new(), &clip);
    assert!(
        !wrong_frames(&adjacent, &[4, 5]).is_empty(),
        "the construction must defeat adjacent matching: {adjacent:?}"
    );
}

#[test]
fn bad_frames_are_errors_not_hangs() {
    for strategy in [Strategy::default(), Strategy::Adjacent, Strategy::LongTerm] {
        let mut m = strategy.build().unwrap();
        m.assign(&[1.0, 0.0, 0.0, 1.0], 2).unwrap();
        assert!(matches!(
            m.assign(&[1.0, f32::NAN, 0.0, 1.0], 2),
            Err(MatchError::NonFinite { frame: 1, query: 0 })
        ));
        assert!(matches!(
            m.assign(&[1.0, 0.0, 0.0, f32::INFINITY], 2),
            Err(MatchError::NonFinite { .. })
        ));
        assert!(matches!(
            m.assign(&[1.0, 0.0, 0.0, 0.0], 2),
            Err(MatchError::ZeroEmbedding { query: 1, .. })
        ));
        assert!(matches!(
            m.assign(&[1.0, 2.0, 3.0], 1),
            Err(MatchError::Shape { .. })
        ));
        m.reset();
        assert_eq!(m.assign(&[1.0, 2.0, 3.0], 1).unwrap(), vec![0, 1, 2]);
    }
    assert!(TopKMatcher::new(MatchConfig {
        memory_frames: 0,
        topk_frames: 1
    })
    .is_err());
    assert!(TopKMatcher::new(MatchConfig {
        memory_frames: 3,
        topk_frames: 0
    })
    .is_err());
}
