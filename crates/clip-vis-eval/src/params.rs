//! Evaluation parameters of the YTVIS and LV-VIS evaluators (`Params.setDetParams`).

/// IoU thresholds, recall points, detection limits and area ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// 0.50:0.05:0.95, computed as `numpy.linspace` does.
    pub iou_thresholds: Vec<f64>,
    /// 0:0.01:1 (101 points), as `numpy.linspace`.
    pub recall_thresholds: Vec<f64>,
    /// Detections kept per (video, category): `[1, 10, 100]`.
    pub max_dets: Vec<usize>,
    /// `(low, high)` of the mean per-frame area: all, small, medium, large.
    pub area_ranges: Vec<(f64, f64)>,
}

/// Names of [`Params::area_ranges`], in order.
pub const AREA_LABELS: [&str; 4] = ["all", "small", "medium", "large"];

/// `numpy.linspace(start, stop, num)`: `start + i * step`, the last point exactly `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut points: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    points[num - 1] = stop;
    points
}

impl Default for Params {
    fn default() -> Self {
        Self {
            iou_thresholds: linspace(0.5, 0.95, 10),
            recall_thresholds: linspace(0.0, 1.0, 101),
            max_dets: vec![1, 10, 100],
            area_ranges: vec![
                (0.0, 1e10),
                (0.0, 128.0 * 128.0),
                (128.0 * 128.0, 256.0 * 256.0),
                (256.0 * 256.0, 1e10),
            ],
        }
    }
}
