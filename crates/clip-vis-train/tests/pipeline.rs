//! The training pipeline end to end on small synthetic data: datasets and their bad records,
//! deterministic loading on any number of threads, exact resume, and data-parallel workers
//! equal to one worker on the combined batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use clip_vis_clip::TensorSink;
use clip_vis_model::ClipVisConfig;
use clip_vis_train::augment::Augmentation;
use clip_vis_train::data::{
    BadRecords, InstanceDataset, InstanceOptions, TrainSource, VideoDataset,
};
use clip_vis_train::distributed::{train_data_parallel, DataParallel};
use clip_vis_train::loader::{Loader, LoaderConfig};
use clip_vis_train::optim::{OptimizerConfig, ScheduleConfig};
use clip_vis_train::rng::Rng;
use clip_vis_train::sampler::{Sampler, SamplerKind};
use clip_vis_train::synthetic::{write_coco, write_ytvis, SynthConfig};
use clip_vis_train::{
    ClipWeights, CriterionConfig, DataSpec, DecoderInit, MatcherConfig, NoHooks, PointSource,
    SeededPoints, TrainConfig, TrainError, Trainer,
};

type A = Autodiff<Flex>;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clip-vis-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn small_synth() -> SynthConfig {
    SynthConfig {
        width: 64,
        height: 48,
        min_objects: 1,
        max_objects: 3,
        min_area: 8,
        ..SynthConfig::default()
    }
}

/// A tiny run on `json` / `images`: 6 iterations of batch 2 at 64x64.
fn tiny_run(json: &Path, images: &Path) -> TrainConfig {
    TrainConfig {
        model: ClipVisConfig::tiny(),
        clip: ClipWeights::Seeded { seed: 7 },
        init: DecoderInit::Fresh { seed: 1 },
        data: DataSpec::Instances {
            json: json.to_path_buf(),
            images: images.to_path_buf(),
            norare: false,
        },
        bad_records: BadRecords::Error,
        augmentation: Augmentation::lsj(64),
        sampler: SamplerKind::RepeatFactor { threshold: 0.3 },
        batch_size: 2,
        workers: 2,
        prefetch: 2,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        schedule: ScheduleConfig {
            max_iter: 6,
            steps: vec![4],
            gamma: 0.1,
            warmup_iters: 2,
            warmup_factor: 0.1,
            warmup_linear: true,
        },
        criterion: CriterionConfig {
            points: 512,
            matcher: MatcherConfig {
                points: 512,
                ..MatcherConfig::default()
            },
            ..CriterionConfig::default()
        },
        seed: 3,
        checkpoint_period: 3,
        log_period: 1,
        eval_period: 0,
    }
}

fn head_tensors(trainer: &Trainer<A>) -> TensorSink {
    use burn::module::AutodiffModule;
    let mut sink = TensorSink::new();
    trainer.head().valid().save(&mut sink);
    sink
}

#[test]
fn interrupted_and_resumed_run_ends_with_identical_weights() {
    let data = scratch("resume-data");
    let json = write_coco(&data, &small_synth(), 0, 6).unwrap();
    let images = data.join("images");
    let device = Default::default();

    let straight = scratch("resume-straight");
    let mut a = Trainer::<A>::new(tiny_run(&json, &images), &straight, &device).unwrap();
    a.run(&mut NoHooks).unwrap();

    let interrupted = scratch("resume-interrupted");
    let mut b = Trainer::<A>::new(tiny_run(&json, &images), &interrupted, &device).unwrap();
    b.run_until(3, &mut NoHooks).unwrap();
    drop(b);
    // Starting over in the same folder is refused: the earlier run is not overwritten.
    assert!(matches!(
        Trainer::<A>::new(tiny_run(&json, &images), &interrupted, &device),
        Err(TrainError::Config(_))
    ));
    let mut b = Trainer::<A>::resume(&interrupted, &device).unwrap();
    assert_eq!(b.iteration(), 3);
    let summary = b.run(&mut NoHooks).unwrap();
    assert_eq!(summary.iteration, 6);

    let (wa, wb) = (head_tensors(&a), head_tensors(&b));
    assert_eq!(wa.len(), wb.len());
    let mut changed = 0;
    for ((key, ta), tb) in wa.tensors().iter().zip(wb.tensors().values()) {
        assert!(
            ta.values
                .iter()
                .zip(&tb.values)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{key}: the resumed run differs"
        );
        changed += usize::from(ta.values.iter().any(|v| *v != 0.0));
    }
    assert!(changed > 0);
    // The metrics read as one run: iterations 1..=6, once each.
    let metrics = std::fs::read_to_string(interrupted.join("metrics.jsonl")).unwrap();
    let iterations: Vec<u64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["iteration"].as_u64())
        .collect();
    assert_eq!(iterations, vec![1, 2, 3, 4, 5, 6]);
    // The final model loads as a CLIP-VIS weights file.
    let final_model = summary.model.unwrap();
    clip_vis_model::ClipVis::<Flex>::from_file(&final_model, &device).unwrap();
}

/// Points that depend only on how many are asked for: every image and mask gets the same ones,
/// so one worker with two pictures and two workers with one each sample identically.
struct SamePoints(u64);

impl PointSource for SamePoints {
    fn uniform(&mut self, n: usize, count: usize) -> Vec<f32> {
        SeededPoints::new(self.0 ^ (count as u64) << 8)
            .uniform(1, count)
            .repeat(n)
    }
}

/// Two 64x64 pictures with two rectangles each (as polygons).
fn rectangles(dir: &Path) -> PathBuf {
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let boxes = [
        [[0.0, 0.0, 40.0, 44.0], [34.0, 20.0, 64.0, 64.0]],
        [[4.0, 16.0, 60.0, 60.0], [0.0, 0.0, 36.0, 30.0]],
    ];
    for (i, pair) in boxes.iter().enumerate() {
        let mut rng = Rng::new(i as u64);
        let pixels: Vec<u8> = (0..64 * 64 * 3)
            .map(|_| (rng.below(40) + 100) as u8)
            .collect();
        let mut picture = image::RgbImage::from_raw(64, 64, pixels).unwrap();
        for (k, b) in pair.iter().enumerate() {
            for y in b[1] as u32..b[3] as u32 {
                for x in b[0] as u32..b[2] as u32 {
                    picture.put_pixel(x, y, image::Rgb([200 * (k as u8 % 2) + 30, 60, 220]));
                }
            }
            annotations.push(serde_json::json!({
                "id": annotations.len() + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                "segmentation": [[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]],
            }));
        }
        picture.save(dir.join(format!("{i}.png"))).unwrap();
        images.push(serde_json::json!({"id": i + 1, "file_name": format!("{i}.png"), "width": 64, "height": 64}));
    }
    let json = dir.join("rectangles.json");
    let value = serde_json::json!({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]});
    std::fs::write(&json, value.to_string()).unwrap();
    json
}

#[test]
fn two_data_parallel_workers_equal_one_worker_on_the_combined_batch() {
    let data = scratch("ddp-data");
    let json = rectangles(&data);
    let config = TrainConfig {
        augmentation: Augmentation::ResizeShortestEdge {
            short_edge: vec![64],
            max_size: 64,
            flip: false,
        },
        sampler: SamplerKind::Uniform,
        workers: 0,
        schedule: ScheduleConfig {
            max_iter: 3,
            steps: vec![],
            ..ScheduleConfig::default()
        },
        checkpoint_period: 0,
        ..tiny_run(&json, &data)
    };
    let device = Default::default();
    let points: clip_vis_train::PointSourceFactory =
        Arc::new(|iteration, _rank| Box::new(SamePoints(iteration as u64 + 11)));

    let single = scratch("ddp-single");
    let mut one = Trainer::<A>::new(config.clone(), &single, &device)
        .unwrap()
        .with_point_source(points.clone());
    one.run(&mut NoHooks).unwrap();

    let parallel = scratch("ddp-two");
    train_data_parallel::<A>(
        Some(config),
        &parallel,
        &[device, device],
        &DataParallel::default(),
        Some(points),
        false,
        &mut NoHooks,
    )
    .unwrap();
    // Compare the updates (final − initial weights): they agree to float rounding (the two
    // runs sum the same terms in different orders), where a missing or wrong all-reduce, or a
    // wrong normaliser, would change them by tens of percent.
    let two = clip_vis_clip::TensorStore::open(parallel.join("model_final.safetensors")).unwrap();
    let initial = clip_vis_train::init::initial_decoders(&ClipVisConfig::tiny(), 1).unwrap();
    let mut compared = 0;
    for (key, expected) in head_tensors(&one).tensors() {
        let got = &two
            .raw(key)
            .unwrap_or_else(|| panic!("{key} missing"))
            .values;
        let start = &initial.raw(key).unwrap().values;
        let update = |w: &[f32]| -> Vec<f32> { w.iter().zip(start).map(|(a, b)| a - b).collect() };
        let (two_workers, one_worker) = (update(got), update(&expected.values));
        let scale = one_worker.iter().fold(1e-9f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in two_workers.iter().zip(&one_worker).enumerate() {
            assert!(
                (a - b).abs() <= 1e-3 * scale,
                "{key}[{i}]: update {a} (2 workers) vs {b} (1 worker)"
            );
        }
        compared += 1;
    }
    assert!(compared > 100);
}

#[test]
fn batches_do_not_depend_on_the_number_of_loader_threads() {
    let data = scratch("loader");
    let json = write_coco(&data, &small_synth(), 0, 5).unwrap();
    let source: Arc<dyn TrainSource> = Arc::new(
        InstanceDataset::open(&json, &data.join("images"), InstanceOptions::default()).unwrap(),
    );
    let sampler = Arc::new(Sampler::new(SamplerKind::Uniform, source.as_ref(), 4));
    let batches = |workers: usize, start: usize| {
        let config = LoaderConfig {
            batch_size: 3,
            workers,
            ..LoaderConfig::default()
        };
        let mut loader = Loader::new(
            source.clone(),
            sampler.clone(),
            Augmentation::lsj(64),
            config,
            start,
        )
        .unwrap();
        (0..3)
            .map(|_| loader.next_batch().unwrap())
            .collect::<Vec<_>>()
    };
    let serial = batches(0, 0);
    assert_eq!(serial, batches(3, 0));
    // Starting at iteration 1 (a resume) gives the same batches from there on.
    assert_eq!(&serial[1..], &batches(2, 1)[..2]);
    assert!(serial.iter().all(|b| b.height == 64 && b.width == 64));
}

fn write_json(path: &Path, value: serde_json::Value) {
    std::fs::write(path, value.to_string()).unwrap();
}

fn one_picture(dir: &Path) -> serde_json::Value {
    let picture = image::RgbImage::from_pixel(16, 12, image::Rgb([9, 9, 9]));
    picture.save(dir.join("a.png")).unwrap();
    serde_json::json!({"id": 1, "file_name": "a.png", "width": 16, "height": 12})
}

#[test]
fn bad_records_are_errors_or_counted_skips() {
    let dir = scratch("bad-records");
    let image = one_picture(&dir);
    let good = serde_json::json!({"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 8, 1, 8, 8]]});
    let open = |annotations: serde_json::Value, bad: BadRecords| {
        let json = dir.join("d.json");
        write_json(
            &json,
            serde_json::json!({"images": [image], "annotations": annotations, "categories": [{"id": 1, "name": "a", "frequency": "r"}]}),
        );
        InstanceDataset::open(
            &json,
            &dir,
            InstanceOptions {
                norare: false,
                bad_records: bad,
            },
        )
    };
    // A polygon of two points.
    let short = serde_json::json!([good, {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]]}]);
    let error = open(short.clone(), BadRecords::Error)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("annotation 2") && error.contains("3 points"),
        "{error}"
    );
    let skipped = open(short, BadRecords::Skip).unwrap();
    assert_eq!(
        (skipped.report().bad_polygons, skipped.report().instances),
        (1, 1)
    );
    // A category the file does not list.
    let unknown = serde_json::json!([good, {"id": 3, "image_id": 1, "category_id": 9, "segmentation": [[1, 1, 8, 1, 8, 8]]}]);
    let error = open(unknown.clone(), BadRecords::Error)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("annotation 3") && error.contains("category 9"),
        "{error}"
    );
    assert_eq!(
        open(unknown, BadRecords::Skip)
            .unwrap()
            .report()
            .unknown_categories,
        1
    );
    // Nothing to train on.
    let error = open(serde_json::json!([]), BadRecords::Skip)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no picture with a usable instance"),
        "{error}"
    );
    // norare drops the rare category's annotations, and then nothing is left.
    let json = dir.join("d.json");
    write_json(
        &json,
        serde_json::json!({"images": [image], "annotations": [good], "categories": [{"id": 1, "name": "a", "frequency": "r"}]}),
    );
    let error = InstanceDataset::open(
        &json,
        &dir,
        InstanceOptions {
            norare: true,
            bad_records: BadRecords::Error,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("1 rare"), "{error}");
    // A file that is not json.
    std::fs::write(&json, "{\"images\": [").unwrap();
    let error = InstanceDataset::open(&json, &dir, InstanceOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("d.json") && error.contains("not a COCO/LVIS instance json"),
        "{error}"
    );
}

#[test]
fn unreadable_pictures_are_errors_naming_the_file_or_counted_skips() {
    let dir = scratch("bad-pictures");
    let good = one_picture(&dir);
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
    let annotation = |id: u64, image: u64| serde_json::json!({"id": id, "image_id": image, "category_id": 1, "segmentation": [[1, 1, 8, 1, 8, 8]]});
    for (name, entry) in [
        (
            "missing.png",
            serde_json::json!({"id": 2, "file_name": "missing.png", "width": 16, "height": 12}),
        ),
        (
            "broken.png",
            serde_json::json!({"id": 2, "file_name": "broken.png", "width": 16, "height": 12}),
        ),
        (
            "a.png",
            serde_json::json!({"id": 2, "file_name": "a.png", "width": 20, "height": 12}),
        ),
    ] {
        let json = dir.join("d.json");
        write_json(
            &json,
            serde_json::json!({"images": [good, entry], "annotations": [annotation(1, 1), annotation(2, 2)], "categories": [{"id": 1, "name": "a"}]}),
        );
        let load = |bad: BadRecords| {
            let source: Arc<dyn TrainSource> =
                Arc::new(InstanceDataset::open(&json, &dir, InstanceOptions::default()).unwrap());
            let sampler = Arc::new(Sampler::new(SamplerKind::Uniform, source.as_ref(), 0));
            let config = LoaderConfig {
                batch_size: 2,
                workers: 1,
                bad_images: bad,
                ..LoaderConfig::default()
            };
            let mut loader =
                Loader::new(source, sampler, Augmentation::lsj(32), config, 0).unwrap();
            loader.next_batch()
        };
        let error = load(BadRecords::Error).unwrap_err().to_string();
        assert!(error.contains(name), "{name}: {error}");
        let batch = load(BadRecords::Skip).unwrap();
        assert!(batch.skipped >= 1, "{name}: the skip was not counted");
    }
}

#[test]
fn video_frames_are_drawn_with_their_instances() {
    let dir = scratch("videos");
    let config = SynthConfig {
        min_objects: 2,
        max_objects: 3,
        ..small_synth()
    };
    let json = write_ytvis(&dir, &config, 0, 2, 8).unwrap();
    let videos = VideoDataset::open(&json, &dir.join("JPEGImages"), BadRecords::Error).unwrap();
    assert_eq!(videos.len(), 2);
    let expected = clip_vis_train::synthetic::render_video(&config, 0, 8).unwrap();
    for draw in 0..10 {
        let mut rng = Rng::new(draw);
        let record = videos.pick(0, &mut rng);
        let frame: usize = record
            .file
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let present = expected
            .tracks
            .iter()
            .filter(|t| t.masks[frame].is_some())
            .count();
        assert_eq!(record.instances.len(), present, "frame {frame}");
    }
    // The video augmentation keeps the picture's aspect and the masks' alignment.
    let record = videos.pick(1, &mut Rng::new(0));
    let picture = clip_vis_train::data::read_image(&record.file).unwrap();
    let out = Augmentation::video_finetune().apply(&picture, &record.instances, &mut Rng::new(1));
    assert_eq!((out.image.height, out.image.width), (800, 1067));
    assert!(out.masks.iter().all(|m| m.len() == 800 * 1067));
}

/// A dataset whose record 1 panics when picked (a bug in a source, say).
struct PanicsOnOne(InstanceDataset);

impl TrainSource for PanicsOnOne {
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn categories(&self, index: usize) -> &[u64] {
        self.0.categories(index)
    }
    fn pick(&self, index: usize, rng: &mut Rng) -> clip_vis_train::data::ImageRecord {
        assert!(index != 1, "record 1 is broken");
        self.0.pick(index, rng)
    }
    fn report(&self) -> &clip_vis_train::data::DatasetReport {
        self.0.report()
    }
}

/// A loader worker that panics while loading a sample makes `next_batch` return an error that
/// names the sample and the panic, with 0, 1 and 3 worker threads; it used to wait forever
/// for the sample the dead worker never sent.
#[test]
fn a_panic_while_loading_is_an_error_naming_the_sample_not_a_hang() {
    let data = scratch("loader-panic");
    let json = write_coco(&data, &small_synth(), 0, 4).unwrap();
    for workers in [0, 1, 3] {
        let (json, images) = (json.clone(), data.join("images"));
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let source: Arc<dyn TrainSource> = Arc::new(PanicsOnOne(
                InstanceDataset::open(&json, &images, InstanceOptions::default()).unwrap(),
            ));
            let sampler = Arc::new(Sampler::new(SamplerKind::Uniform, source.as_ref(), 0));
            let config = LoaderConfig {
                batch_size: 2,
                workers,
                ..LoaderConfig::default()
            };
            let mut loader =
                Loader::new(source, sampler, Augmentation::lsj(32), config, 0).unwrap();
            // Every record comes up within a few batches of a uniform sampler over 4.
            let outcome = (0..8)
                .map(|_| loader.next_batch().map(|_| ()))
                .find(|r| r.is_err())
                .unwrap_or(Ok(()));
            let _ = send.send(outcome.map_err(|e| e.to_string()));
        });
        let outcome = receive
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("{workers} workers: the loader hung after a panic"));
        let message = outcome.expect_err("record 1 was never loaded");
        assert!(
            message.contains("training sample") && message.contains("record 1 is broken"),
            "{workers} workers: {message}"
        );
    }
    std::fs::remove_dir_all(&data).unwrap();
}
