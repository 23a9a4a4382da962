//! Plots for `anonmirror status --plot`: the offload ratio and the bytes
//! handed to the package manager by source, over time.

use std::path::Path;

use anonmirror_mirror::metrics::Sample;
use plotters::prelude::*;

/// Where a font is looked for (the first that exists is used).
pub const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = FONTS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                "no font found for the plot's text: install fonts-dejavu-core".to_owned()
            })?;
        // Registered once per process, for the process's life.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the font file is not a usable TrueType font".to_owned())
    })
    .clone()
}

/// Which counter of a sample a series shows.
type Pick = fn(&Sample) -> u64;

/// Draw `history` into `path` (PNG or SVG, by extension).
pub fn offload(history: &[Sample], path: &Path) -> Result<(), String> {
    if history.is_empty() {
        return Err("no samples yet".to_owned());
    }
    register_font()?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => draw(
            SVGBackend::new(path, (900, 600)).into_drawing_area(),
            history,
        ),
        Some("png") => draw(
            BitMapBackend::new(path, (900, 600)).into_drawing_area(),
            history,
        ),
        _ => Err(format!(
            "{}: the file name must end in .png or .svg",
            path.display()
        )),
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    history: &[Sample],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let t0 = history[0].at;
    let t_end = history.last().map_or(t0, |s| s.at).max(t0 + 60);
    let minutes = |t: u64| (t - t0) as f64 / 60.0;
    let (top, bottom) = root.split_vertically(300);

    let mut chart = ChartBuilder::on(&top)
        .caption(
            "offload ratio (bytes not from the upstream)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..minutes(t_end), 0.0..100.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("%")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            history
                .iter()
                .map(|s| (minutes(s.at), 100.0 * s.offload_ratio())),
            BLUE.stroke_width(2),
        ))
        .map_err(err)?;

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let max = history
        .iter()
        .map(|s| mib(s.from_peers.max(s.from_store).max(s.from_upstream)))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "bytes handed to the package manager, by source (MiB)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..minutes(t_end), 0.0..max * 1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .draw()
        .map_err(err)?;
    let series: [(&str, RGBColor, Pick); 3] = [
        ("peers", GREEN, |s| s.from_peers),
        ("store", BLUE, |s| s.from_store),
        ("upstream", RED, |s| s.from_upstream),
    ];
    for (label, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                history.iter().map(|s| (minutes(s.at), mib(f(s)))),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> Vec<Sample> {
        (0..5)
            .map(|i| Sample {
                at: 1_000 + 60 * i,
                from_store: i * 10,
                from_peers: i * 1_000_000,
                from_upstream: 500_000,
                served_to_peers: 0,
            })
            .collect()
    }

    #[test]
    fn draws_png_and_svg_and_refuses_other_names() {
        if let Err(e) = register_font() {
            // scripts/test installs fonts-dejavu-core; without it, say so.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{e} (scripts/test installs scripts/system-packages)"
            );
            assert!(FONTS.iter().all(|p| !Path::new(p).exists()));
            return;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let png = dir.path().join("o.png");
        offload(&history(), &png).expect("png");
        let bytes = std::fs::read(&png).expect("read");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let svg = dir.path().join("o.svg");
        offload(&history(), &svg).expect("svg");
        let text = std::fs::read_to_string(&svg).expect("read");
        assert!(
            text.contains("<svg") && text.contains("offload ratio"),
            "{text}"
        );
        assert!(offload(&history(), &dir.path().join("o.gif")).is_err());
        assert!(offload(&[], &png).is_err());
    }
}
