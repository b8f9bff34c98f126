//! LV-VIS evaluation of a results file, without a server.
//!
//! ```text
//! cargo run --release --example eval_lvvis -- val_instances.json results.json
//! ```
//! Prints AP, AP_b (base) and AP_n (novel) as the LV-VIS evaluator defines them, e.g.:
//! ```text
//! AP 19.50  AP_b 17.10  AP_n 24.20  (in 12.3 s)
//! ```

use clip_vis::eval::{evaluate_files, Protocol};

fn main() -> Result<(), clip_vis::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gt, results] = args.as_slice() else {
        eprintln!("usage: eval_lvvis <ground-truth json> <results json>");
        std::process::exit(2);
    };
    let started = std::time::Instant::now();
    let report = evaluate_files(gt, results, &Protocol::Lvvis)?;
    let percent = |s: Option<clip_vis::eval::Summary>| s.map_or(-1.0, |s| 100.0 * s.stats[0]);
    println!(
        "AP {:.2}  AP_b {:.2}  AP_n {:.2}  (in {:.1} s)",
        100.0 * report.all.stats[0],
        percent(report.base),
        percent(report.novel),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
