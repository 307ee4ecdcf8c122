//! The report's SVG charts, drawn with plotters' SVG backend: line charts
//! with optional log axes and the legend beside the plot, and horizontal
//! bar charts. plotters is built without its `ttf` feature (no fontconfig
//! or FreeType): the SVG backend writes text as `<text>` elements, and
//! plotters' built-in estimate of text extents is enough to lay out the
//! axes' labels.

use std::ops::Range;

use plotters::{
    coord::ranged1d::{AsRangedCoord, SegmentValue, ValueFormatter},
    element::DashedPathElement,
    prelude::*,
};

pub const COLORS: [&str; 7] = [
    "#1b6ac9", "#d9480f", "#2b8a3e", "#7048e8", "#868e96", "#c2255c", "#e8a317",
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: &'static str,
    pub dashed: bool,
}

pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

pub struct Bar {
    pub label: String,
    pub value: f64,
    pub color: &'static str,
}

/// What plotters could not draw (its backend's error, as text).
#[derive(Debug, thiserror::Error)]
#[error("drawing the chart {chart:?}: {message}")]
pub struct ChartError {
    chart: String,
    message: String,
}

const W: u32 = 760;
const H: u32 = 430;
/// Room right of the plot for the line charts' legend.
const LEGEND_W: u32 = 250;
const FONT: &str = "sans-serif";
/// plotters' SVG backend writes a font of size `s` as `font-size` s / 1.24
/// (pixels to points): the titles' 15 and the labels' 12.
const TITLE_SIZE: f64 = 15.0 * 1.24;
const LABEL_SIZE: f64 = 12.0 * 1.24;
const GRID: RGBColor = RGBColor(0xe9, 0xec, 0xef);
const FRAME: RGBColor = RGBColor(0x49, 0x50, 0x57);

/// A short label for a tick value.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 && (v / 1e6).fract() == 0.0 {
        format!("{}M", v / 1e6)
    } else if a >= 1e3 && (v / 1e3).fract() == 0.0 {
        format!("{}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `#rrggbb` as plotters' colour (black for anything else).
fn rgb(hex: &str) -> RGBColor {
    let channel = |i: usize| {
        hex.get(i..i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    RGBColor(channel(1), channel(3), channel(5))
}

/// The span of the values an axis shows: whole decades on a log axis
/// (positive values only), from zero on a linear one.
fn span(values: impl Iterator<Item = f64>, log: bool) -> Range<f64> {
    let values: Vec<f64> = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .collect();
    let (mut lo, mut hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if values.is_empty() {
        (lo, hi) = (1.0, 10.0);
    }
    if log {
        lo = 10f64.powf(lo.log10().floor());
        hi = 10f64.powf(hi.log10().ceil());
        if hi <= lo {
            hi = lo * 10.0;
        }
    } else {
        // From zero, with room above the highest point.
        lo = lo.min(0.0);
        hi = if hi <= lo {
            lo + 1.0
        } else {
            hi + (hi - lo) * 0.05
        };
    }
    lo..hi
}

fn error(chart: &str) -> impl Fn(String) -> ChartError + '_ {
    move |message| ChartError {
        chart: chart.to_string(),
        message,
    }
}

pub fn line_chart(c: &LineChart) -> Result<String, ChartError> {
    let xs = span(
        c.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        c.log_x,
    );
    let ys = span(
        c.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
        c.log_y,
    );
    let labels = (labels(&xs, c.log_x), labels(&ys, c.log_y));
    let mut svg = String::new();
    let drawn = match (c.log_x, c.log_y) {
        (false, false) => draw_lines(&mut svg, c, xs, ys, labels),
        (true, false) => draw_lines(&mut svg, c, xs.log_scale(), ys, labels),
        (false, true) => draw_lines(&mut svg, c, xs, ys.log_scale(), labels),
        (true, true) => draw_lines(&mut svg, c, xs.log_scale(), ys.log_scale(), labels),
    };
    drawn.map_err(error(c.title))?;
    Ok(svg)
}

/// How many labels an axis over `span` gets: one a decade on a log axis
/// (plotters fills a decade with 2, 3, ... 9 when allowed more), about
/// five steps on a linear one.
fn labels(span: &Range<f64>, log: bool) -> usize {
    if log {
        (span.end / span.start).log10().round().max(1.0) as usize + 1
    } else {
        6
    }
}

/// Draws `c` on axes `x` and `y` (linear or log) into `svg`, with `labels`
/// (x, y) tick labels at most.
fn draw_lines<X, Y>(
    svg: &mut String,
    c: &LineChart,
    x: X,
    y: Y,
    labels: (usize, usize),
) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = SVGBackend::with_string(svg, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (plot_area, legend_area) = root.split_horizontally(W - LEGEND_W);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(
            c.title,
            (FONT, TITLE_SIZE).into_font().style(FontStyle::Bold),
        )
        .margin(10)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .axis_style(FRAME)
        .x_desc(c.x_label)
        .y_desc(c.y_label)
        .x_labels(labels.0)
        .y_labels(labels.1)
        .x_label_formatter(&|v| num(*v))
        .y_label_formatter(&|v| num(*v))
        .label_style((FONT, LABEL_SIZE))
        .draw()
        .map_err(|e| e.to_string())?;
    for ser in &c.series {
        let color = rgb(ser.color);
        let points: Vec<(f64, f64)> = ser
            .points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite() && (!c.log_y || p.1 > 0.0))
            .collect();
        let line = color.stroke_width(2);
        if ser.dashed {
            chart
                .draw_series(DashedLineSeries::new(points.iter().copied(), 6, 4, line))
                .map_err(|e| e.to_string())?;
        } else {
            chart
                .draw_series(LineSeries::new(points.iter().copied(), line))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    frame(&root, chart.plotting_area().get_pixel_range())?;
    // The legend beside the plot, one row a series, in their order.
    for (i, ser) in c.series.iter().enumerate() {
        let y = 54 + 20 * i as i32;
        let line = rgb(ser.color).stroke_width(2);
        let (from, to) = ((16, y), (38, y));
        if ser.dashed {
            legend_area
                .draw(&DashedPathElement::new([from, to], 6, 4, line))
                .map_err(|e| e.to_string())?;
        } else {
            legend_area
                .draw(&PathElement::new([from, to], line))
                .map_err(|e| e.to_string())?;
        }
        legend_area
            .draw(&Text::new(
                ser.name.clone(),
                (44, y - 6),
                (FONT, LABEL_SIZE).into_font(),
            ))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// A rectangle around the plot at `pixels` (the mesh draws only the axes).
fn frame<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    pixels: (Range<i32>, Range<i32>),
) -> Result<(), String> {
    let (x, y) = pixels;
    root.draw(&Rectangle::new([(x.start, y.start), (x.end, y.end)], FRAME))
        .map_err(|e| e.to_string())
}

pub fn bar_chart(title: &str, unit: &str, bars: &[Bar]) -> Result<String, ChartError> {
    let mut svg = String::new();
    draw_bars(&mut svg, title, unit, bars).map_err(error(title))?;
    Ok(svg)
}

fn draw_bars(svg: &mut String, title: &str, unit: &str, bars: &[Bar]) -> Result<(), String> {
    let rows = bars.len() as u32;
    let height = 102 + 26 * rows;
    let max = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-9);
    let root = SVGBackend::with_string(svg, (W, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    // The first bar on top: row i is segment rows - 1 - i.
    let segment = |i: usize| (rows as i32) - 1 - i as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, TITLE_SIZE).into_font().style(FontStyle::Bold))
        .margin(10)
        .margin_right(90)
        .x_label_area_size(44)
        .y_label_area_size(280)
        // A segmented 0..n has n + 1 segments (both ends count).
        .build_cartesian_2d(0.0..max * 1.05, (0..rows as i32 - 1).into_segmented())
        .map_err(|e| e.to_string())?;
    let label_of = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(s) | SegmentValue::Exact(s) => bars
            .iter()
            .enumerate()
            .find(|(i, _)| segment(*i) == *s)
            .map(|(_, b)| b.label.clone())
            .unwrap_or_default(),
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .axis_style(FRAME)
        .x_desc(unit)
        .x_label_formatter(&|v| num(*v))
        .y_labels(bars.len())
        .y_label_formatter(&label_of)
        .label_style((FONT, LABEL_SIZE))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, b) in bars.iter().enumerate() {
        let s = segment(i);
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(s)),
                (b.value, SegmentValue::Exact(s + 1)),
            ],
            rgb(b.color).filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        chart.draw_series([bar]).map_err(|e| e.to_string())?;
        // The value just right of the bar's end, centred on it.
        let value = EmptyElement::at((b.value, SegmentValue::CenterOf(s)))
            + Text::new(num(b.value), (6, -7), (FONT, LABEL_SIZE).into_font());
        chart.draw_series([value]).map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, dashed: bool) -> Series {
        Series {
            name: name.into(),
            points: vec![(10.0, 14.0), (100.0, 66.0), (1000.0, 1700.0)],
            color: COLORS[1],
            dashed,
        }
    }

    #[test]
    fn a_line_chart_has_its_title_labels_legend_and_a_path_per_series() {
        let svg = line_chart(&LineChart {
            title: "cost per packet",
            x_label: "rules",
            y_label: "ns",
            log_x: true,
            log_y: true,
            series: vec![series("contain & co", false), series("thesis", true)],
        })
        .expect("drawn");
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "cost per packet",
            "rules",
            "ns",
            "contain &amp; co",
            "thesis",
            "1k",
        ] {
            assert!(svg.contains(text), "no {text:?} in {svg}");
        }
        assert!(svg.contains("#D9480F") || svg.contains("#d9480f"), "{svg}");
        assert!(svg.contains("stroke-dasharray") || svg.matches("<polyline").count() > 2);
    }

    #[test]
    fn a_bar_chart_labels_every_bar_with_its_value() {
        let bars = [
            Bar {
                label: "no filter".into(),
                value: 9.5,
                color: COLORS[4],
            },
            Bar {
                label: "contain".into(),
                value: 9.25,
                color: COLORS[0],
            },
        ];
        let svg = bar_chart("TCP throughput", "Gbit/s", &bars).expect("drawn");
        for text in [
            "TCP throughput",
            "Gbit/s",
            "no filter",
            "contain",
            "9.5",
            "9.2",
        ] {
            assert!(svg.contains(text), "no {text:?} in {svg}");
        }
    }
}
