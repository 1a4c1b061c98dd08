//! PNG plots of a sweep: goodput on the left, CPU per MB on the right.
//!
//! Drawn with plotters' bitmap backend. Text needs a TrueType font, which
//! plotters (built without its system-font feature, to keep the build free
//! of fontconfig) does not find by itself: the first DejaVu or Liberation
//! font found under `/usr/share/fonts` is registered at run time. Without
//! one the plot is drawn all the same, with no text on it.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::anyhow;
use plotters::prelude::*;

/// One measured point of a sweep.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// The swept parameter.
    pub x: f64,
    /// Goodput, Mbit/s.
    pub goodput: f64,
    /// Sender CPU, ms per MB.
    pub tx_cpu: f64,
    /// Receiver CPU, ms per MB.
    pub rx_cpu: f64,
}

/// A named line of points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend.
    pub name: &'static str,
    /// Points, in sweep order.
    pub points: Vec<Point>,
}

/// One line of a panel: legend, points, colour.
type Line = (String, Vec<(f64, f64)>, RGBColor);

const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Register a font once; whether text can be drawn.
fn has_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        FONT_CANDIDATES
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .is_some_and(|bytes| {
                // plotters keeps the font for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
    })
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
}

/// Draw `series` into `path` (800 × 360 PNG).
pub fn draw(path: &Path, x_label: &str, series: &[Series]) -> anyhow::Result<()> {
    let text = has_font();
    let root = BitMapBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(450);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(all().map(|p| p.x));
    let pad = ((x1 - x0) * 0.05).max(0.5);
    let (_, g1) = range(all().map(|p| p.goodput));
    let (_, c1) = range(all().flat_map(|p| [p.tx_cpu, p.rx_cpu]));
    let colors = [BLUE, RED, GREEN, MAGENTA];

    let panel = |area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
                 y_max: f64,
                 y_label: &str,
                 lines: &[Line]|
     -> anyhow::Result<()> {
        let mut b = ChartBuilder::on(area);
        b.margin(12);
        if text {
            b.x_label_area_size(36).y_label_area_size(52);
        } else {
            b.x_label_area_size(8).y_label_area_size(8);
        }
        let mut chart = b
            .build_cartesian_2d(x0 - pad..x1 + pad, 0.0..y_max * 1.15 + 1e-9)
            .map_err(|e| anyhow!("{e}"))?;
        let mut mesh = chart.configure_mesh();
        // No fine grid: lighter to read, and the PNG stays small.
        mesh.light_line_style(WHITE);
        if text {
            mesh.x_desc(x_label).y_desc(y_label);
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| anyhow!("{e}"))?;
        for (name, pts, color) in lines {
            let s = chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?;
            if text {
                let c = *color;
                s.label(name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            }
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerLeft)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    };

    let goodput: Vec<_> = series
        .iter()
        .zip(colors.iter().cycle())
        .map(|(s, c)| {
            (
                format!("{} goodput", s.name),
                s.points.iter().map(|p| (p.x, p.goodput)).collect(),
                *c,
            )
        })
        .collect();
    panel(&left, g1, "goodput, Mbit/s", &goodput)?;
    let mut cpu = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let (tx_color, rx_color) = (colors[(2 * i) % 4], colors[(2 * i + 1) % 4]);
        cpu.push((
            format!("{} tx", s.name),
            s.points.iter().map(|p| (p.x, p.tx_cpu)).collect(),
            tx_color,
        ));
        cpu.push((
            format!("{} rx", s.name),
            s.points.iter().map(|p| (p.x, p.rx_cpu)).collect(),
            rx_color,
        ));
    }
    panel(&right, c1, "CPU, ms per MB", &cpu)?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
