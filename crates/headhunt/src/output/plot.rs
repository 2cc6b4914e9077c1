//! Figures as PNG and SVG: heatmaps (layers x heads, depth x length), line plots with error bars,
//! scatter plots. Every figure has a title, axis labels and, for heatmaps, a colour bar, at sizes
//! that stay readable in print. Text is drawn with an embedded DejaVu Sans, so PNGs render the
//! same on every machine.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is valid TrueType bundled with the `dejavu` crate; registration cannot fail
        // for it, and if it did, PNG text would be missing rather than the figure.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a figure: {e:?}")
}

/// Something that can draw itself on any plotters backend.
pub trait Figure {
    /// Pixel size of the whole figure.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;

    /// Write `<stem>.png` and `<stem>.svg`, each replacing the old file whole (drawn beside it,
    /// then renamed over it); returns both paths.
    fn save(&self, stem: &Path) -> Result<[PathBuf; 2]> {
        register_font();
        if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let png = stem.with_extension("png");
        let svg = stem.with_extension("svg");
        // The drawing's temporary files keep their extension: the PNG encoder goes by it.
        let name = stem.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let temp = |ext: &str| stem.with_file_name(format!(".{name}.{}.tmp.{ext}", std::process::id()));
        let (png_tmp, svg_tmp) = (temp("png"), temp("svg"));
        let drawn = (|| -> Result<()> {
            let root = BitMapBackend::new(&png_tmp, self.size()).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            self.draw(&root)?;
            root.present().map_err(err)?;
            let root = SVGBackend::new(&svg_tmp, self.size()).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            self.draw(&root)?;
            root.present().map_err(err)?;
            std::fs::rename(&png_tmp, &png)?;
            std::fs::rename(&svg_tmp, &svg)?;
            Ok(())
        })();
        if drawn.is_err() {
            std::fs::remove_file(&png_tmp).ok();
            std::fs::remove_file(&svg_tmp).ok();
        }
        drawn.with_context(|| format!("drawing {}", png.display()))?;
        Ok([png, svg])
    }
}

/// A grid of values, `values[row * cols + col]`, row 0 drawn at the top.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_ticks: Vec<String>,
    pub y_ticks: Vec<String>,
    pub values: Vec<f64>,
    /// Colour scale; values outside are clamped.
    pub range: (f64, f64),
    pub value_label: String,
}

impl Heatmap {
    /// A layers x heads map of one value per head (`values[layer * n_heads + head]`).
    pub fn heads(title: &str, n_layers: usize, n_heads: usize, values: Vec<f64>, value_label: &str) -> Self {
        let max = values.iter().copied().fold(0.0f64, f64::max).max(1e-9);
        Heatmap {
            title: title.into(),
            x_label: "head".into(),
            y_label: "layer".into(),
            x_ticks: (0..n_heads).map(|h| h.to_string()).collect(),
            y_ticks: (0..n_layers).map(|l| l.to_string()).collect(),
            values,
            range: (0.0, max),
            value_label: value_label.into(),
        }
    }

    fn cols(&self) -> usize {
        self.x_ticks.len()
    }

    fn rows(&self) -> usize {
        self.y_ticks.len()
    }

    fn cell(&self) -> (u32, u32) {
        let w = (640 / self.cols().max(1) as u32).clamp(22, 70);
        let h = (720 / self.rows().max(1) as u32).clamp(14, 50);
        (w, h)
    }

    fn panel_size(&self) -> (u32, u32) {
        let (w, h) = self.cell();
        (w * self.cols() as u32 + 250, h * self.rows() as u32 + 160)
    }

    fn color(&self, v: f64) -> RGBColor {
        let (lo, hi) = self.range;
        let t = if hi > lo { ((v - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.0 };
        ViridisRGB::get_color(t as f32)
    }

    fn draw_panel<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let (cols, rows) = (self.cols(), self.rows());
        let (main, bar) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(120));
        let mut chart = ChartBuilder::on(&main)
            .caption(&self.title, (FONT, 24))
            .margin(12)
            .x_label_area_size(54)
            .y_label_area_size(70)
            .build_cartesian_2d(0..cols, 0..rows)
            .map_err(err)?;
        let x_ticks = &self.x_ticks;
        let y_ticks = &self.y_ticks;
        let every = |n: usize, room: usize| n.div_ceil(room.max(1)).max(1);
        let (x_every, y_every) = (every(cols, 24), every(rows, 32));
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols + 1)
            .y_labels(rows + 1)
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .axis_desc_style((FONT, 20))
            .label_style((FONT, 16))
            .x_label_offset(self.cell().0 as i32 / 2)
            .y_label_offset(-(self.cell().1 as i32) / 2)
            .x_label_formatter(&|x| {
                if *x < cols && x % x_every == 0 {
                    x_ticks[*x].clone()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| {
                // Row 0 is drawn at the top.
                let r = rows.wrapping_sub(1).wrapping_sub(*y);
                if *y < rows && r % y_every == 0 {
                    y_ticks[r].clone()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(err)?;
        chart
            .draw_series((0..rows).flat_map(|r| {
                (0..cols).map(move |c| {
                    let y = rows - 1 - r;
                    Rectangle::new([(c, y), (c + 1, y + 1)], self.color(self.values[r * cols + c]).filled())
                })
            }))
            .map_err(err)?;
        self.draw_colorbar(&bar)
    }

    fn draw_colorbar<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let (lo, hi) = self.range;
        let steps = 100;
        let mut chart = ChartBuilder::on(area)
            .margin_top(48)
            .margin_bottom(60)
            .margin_right(8)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..1.0, lo..hi.max(lo + 1e-9))
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(6)
            .y_desc(&self.value_label)
            .axis_desc_style((FONT, 18))
            .label_style((FONT, 16))
            .y_label_formatter(&|v| format_tick(*v))
            .draw()
            .map_err(err)?;
        chart
            .draw_series((0..steps).map(|i| {
                let a = lo + (hi - lo) * i as f64 / steps as f64;
                let b = lo + (hi - lo) * (i + 1) as f64 / steps as f64;
                Rectangle::new([(0.0, a), (1.0, b)], self.color((a + b) / 2.0).filled())
            }))
            .map_err(err)?;
        Ok(())
    }
}

fn format_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Heatmaps side by side, sharing nothing but the figure.
pub struct Heatmaps(pub Vec<Heatmap>);

impl Figure for Heatmaps {
    fn size(&self) -> (u32, u32) {
        let w = self.0.iter().map(|h| h.panel_size().0).sum::<u32>();
        let h = self.0.iter().map(|h| h.panel_size().1).max().unwrap_or(400);
        (w.max(300), h)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let mut rest = root.clone();
        for panel in &self.0 {
            let (left, right) = rest.split_horizontally(panel.panel_size().0);
            panel.draw_panel(&left)?;
            rest = right;
        }
        Ok(())
    }
}

impl Figure for Heatmap {
    fn size(&self) -> (u32, u32) {
        self.panel_size()
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        self.draw_panel(root)
    }
}

/// One line of a [`LinePlot`]: points with an optional symmetric error bar.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub errors: Option<Vec<f64>>,
}

#[derive(Debug, Clone)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub y_range: Option<(f64, f64)>,
}

/// Matplotlib's tab10 and two more: distinct colours for up to twelve lines (RULER's tasks).
const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(174, 199, 232),
];

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.06).max(1e-6);
    (lo - pad, hi + pad)
}

impl Figure for LinePlot {
    fn size(&self) -> (u32, u32) {
        (960, 640)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let xs = bounds(self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
        let ys = self.y_range.unwrap_or_else(|| {
            bounds(self.series.iter().flat_map(|s| {
                s.points.iter().enumerate().flat_map(move |(i, p)| {
                    let e = s.errors.as_ref().map_or(0.0, |e| e[i]);
                    [p.1 - e, p.1 + e]
                })
            }))
        });
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 24))
            .margin(20)
            .x_label_area_size(56)
            .y_label_area_size(72)
            .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .axis_desc_style((FONT, 18))
            .label_style((FONT, 15))
            .x_label_formatter(&|v| format_tick(*v))
            .y_label_formatter(&|v| format_tick(*v))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(3)))
                .map_err(err)?
                .label(&s.name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))
                .map_err(err)?;
            if let Some(errors) = &s.errors {
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .zip(errors)
                            .filter(|(_, &e)| e > 0.0)
                            .map(|(&(x, y), &e)| PathElement::new([(x, y - e), (x, y + e)], color.stroke_width(2))),
                    )
                    .map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// Points with a fitted correlation in the title; the `labels` name the points worth naming.
#[derive(Debug, Clone)]
pub struct Scatter {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<(f64, f64)>,
    pub labels: Vec<(usize, String)>,
}

impl Figure for Scatter {
    fn size(&self) -> (u32, u32) {
        (900, 700)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let xs = bounds(self.points.iter().map(|p| p.0));
        let ys = bounds(self.points.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 22))
            .margin(20)
            .x_label_area_size(56)
            .y_label_area_size(72)
            .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .axis_desc_style((FONT, 18))
            .label_style((FONT, 15))
            .x_label_formatter(&|v| format_tick(*v))
            .y_label_formatter(&|v| format_tick(*v))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(self.points.iter().map(|&p| Circle::new(p, 4, PALETTE[0].mix(0.7).filled())))
            .map_err(err)?;
        chart
            .draw_series(self.labels.iter().filter_map(|(i, text)| {
                self.points
                    .get(*i)
                    .map(|&p| Text::new(text.clone(), p, (FONT, 14).into_font().color(&BLACK)))
            }))
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_written_as_png_and_svg() {
        let dir = std::env::temp_dir().join(format!("hh-plot-{}", std::process::id()));
        let map = Heatmap::heads("retrieval scores", 4, 3, (0..12).map(|i| i as f64 / 12.0).collect(), "mean score");
        let [png, svg] = Heatmaps(vec![map.clone(), map]).save(&dir.join("heads")).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 1000);
        let text = std::fs::read_to_string(svg).unwrap();
        assert!(text.contains("retrieval scores") && text.contains("layer") && text.contains("mean score"));
        let lines = LinePlot {
            title: "score vs K".into(),
            x_label: "K".into(),
            y_label: "score".into(),
            series: vec![Series {
                name: "top".into(),
                points: vec![(0.0, 90.0), (5.0, 40.0)],
                errors: Some(vec![0.0, 5.0]),
            }],
            y_range: Some((0.0, 100.0)),
        };
        lines.save(&dir.join("lines")).unwrap();
        std::fs::remove_dir_all(dir).ok();
    }
}
