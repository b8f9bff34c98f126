//! Matching against the SciPy-based reference of `scripts/fixtures/gen_matching_scoring.py`
//! (the official `match_from_vote_embds` loop, MinVIS adjacent matching and our long-term
//! aggregate) on random and constructed embedding sequences: identical permutations.

use clip_vis_matching::{MatchConfig, Strategy};
use safetensors::SafeTensors;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/matching_cases.safetensors"
);

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let view = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn i64s(st: &SafeTensors, name: &str) -> Vec<i64> {
    let view = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
    view.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn permutations_equal_the_reference() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 10);
    for (i, case) in cases.iter().enumerate() {
        let get = |k: &str| case[k].as_u64().unwrap() as usize;
        let (frames, queries, dim) = (get("frames"), get("queries"), get("dim"));
        let strategy = match case["strategy"].as_str().unwrap() {
            "topk" => Strategy::TopK(MatchConfig {
                memory_frames: get("memory_frames"),
                topk_frames: get("topk_frames"),
            }),
            "adjacent" => Strategy::Adjacent,
            "longterm" => Strategy::LongTerm,
            other => panic!("unknown strategy {other}"),
        };
        let embeddings = f32s(&st, &format!("case{i}.frames"));
        let expected = i64s(&st, &format!("case{i}.perms"));
        let mut matcher = strategy.build().unwrap();
        for f in 0..frames {
            let frame = &embeddings[f * queries * dim..(f + 1) * queries * dim];
            let perm = matcher.assign(frame, dim).unwrap();
            let want: Vec<usize> = expected[f * queries..(f + 1) * queries]
                .iter()
                .map(|&v| v as usize)
                .collect();
            assert_eq!(perm, want, "case {} frame {f}", case["name"]);
        }
        assert_eq!(matcher.frames_seen(), frames);
    }
}
