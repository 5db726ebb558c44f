//! The replay plot: one panel per action dimension, recorded (blue) against replayed (orange)
//! over time, steps whose token differs shaded red. Drawn with the `image` crate and a built-in
//! 5 × 7 pixel font, so that it needs no system fonts.

use image::{Rgb, RgbImage};

pub const PLOT_WIDTH: u32 = 1200;
const PANEL_HEIGHT: u32 = 140;
const TOP: u32 = 56;
const BOTTOM: u32 = 44;
const LEFT: u32 = 150;
const RIGHT: u32 = 20;
/// Text is drawn at this multiple of the 5 × 7 font.
const SCALE: u32 = 2;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([20, 20, 20]);
const GRID: Rgb<u8> = Rgb([200, 200, 200]);
const RECORDED: Rgb<u8> = Rgb([31, 119, 180]);
const REPLAYED: Rgb<u8> = Rgb([255, 127, 14]);
const MISMATCH: Rgb<u8> = Rgb([255, 200, 200]);

/// Height of a plot with `dims` panels.
pub fn plot_height(dims: usize) -> u32 {
    TOP + PANEL_HEIGHT * dims as u32 + BOTTOM
}

/// What to draw.
pub struct PlotData<'a> {
    pub title: &'a str,
    /// Names of the dimensions, one panel each.
    pub names: &'a [&'a str],
    /// Step times, seconds from the first step.
    pub times_s: &'a [f64],
    /// Per step, per dimension.
    pub recorded: &'a [Vec<f64>],
    pub replayed: &'a [Vec<f64>],
    /// Per step, per dimension: the replayed token differs from the recorded one.
    pub mismatch: &'a [Vec<bool>],
}

/// Rows of each glyph, 5 bits each (MSB left).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, color);
    }
}

/// Width in pixels of `text` drawn by [`text`].
fn text_width(text: &str) -> u32 {
    text.chars().count() as u32 * 6 * SCALE
}

fn text(img: &mut RgbImage, x: u32, y: u32, text: &str, color: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let rows = glyph(c);
        let gx = x + i as u32 * 6 * SCALE;
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            put(
                                img,
                                i64::from(gx + col * SCALE + dx),
                                i64::from(y + row as u32 * SCALE + dy),
                                color,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A 2-pixel-wide line.
fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: Rgb<u8>) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let x = (x0 + (x1 - x0) * t).round() as i64;
        let y = (y0 + (y1 - y0) * t).round() as i64;
        put(img, x, y, color);
        put(img, x, y + 1, color);
    }
}

fn fill(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, color: Rgb<u8>) {
    for y in y0..y1.min(img.height()) {
        for x in x0..x1.min(img.width()) {
            img.put_pixel(x, y, color);
        }
    }
}

fn number(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// Draws the plot.
pub fn draw(data: &PlotData<'_>) -> RgbImage {
    let dims = data.names.len();
    let mut img = RgbImage::from_pixel(PLOT_WIDTH, plot_height(dims), WHITE);
    text(&mut img, 10, 8, data.title, BLACK);
    // Legend.
    let mut x = 10;
    for (label, color) in [
        ("RECORDED", RECORDED),
        ("REPLAYED", REPLAYED),
        ("TOKEN DIFFERS", MISMATCH),
    ] {
        fill(&mut img, x, 34, x + 24, 46, color);
        text(&mut img, x + 30, 33, label, BLACK);
        x += 30 + text_width(label) + 30;
    }
    let plot_w = f64::from(PLOT_WIDTH - LEFT - RIGHT);
    let t_end = data.times_s.last().copied().unwrap_or(0.0).max(1e-9);
    let x_of = |t: f64| f64::from(LEFT) + t / t_end * plot_w;
    let steps = data.times_s.len();
    for d in 0..dims {
        let top = TOP + d as u32 * PANEL_HEIGHT;
        let (y0, y1) = (top + 8, top + PANEL_HEIGHT - 8);
        let value = |v: &[Vec<f64>], i: usize| v.get(i).and_then(|s| s.get(d)).copied();
        let values = (0..steps).flat_map(|i| [value(data.recorded, i), value(data.replayed, i)]);
        let (mut lo, mut hi) = values
            .flatten()
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            (lo, hi) = (lo - 0.5, hi + 0.5);
        }
        let pad = (hi - lo) * 0.08;
        let (lo, hi) = (lo - pad, hi + pad);
        let y_of = |v: f64| f64::from(y1) - (v - lo) / (hi - lo) * f64::from(y1 - y0);
        // Shade the steps whose token differs, as wide as half the gap to each neighbour.
        for i in 0..steps {
            let differs = data
                .mismatch
                .get(i)
                .and_then(|m| m.get(d))
                .copied()
                .unwrap_or(false);
            if !differs {
                continue;
            }
            let t = data.times_s[i];
            let before = if i > 0 { data.times_s[i - 1] } else { t };
            let after = data.times_s.get(i + 1).copied().unwrap_or(t);
            let xa = x_of((t + before) / 2.0).floor() as u32;
            let xb = (x_of((t + after) / 2.0).ceil() as u32).max(xa + 3);
            fill(&mut img, xa.saturating_sub(1), y0, xb + 1, y1, MISMATCH);
        }
        // Frame and zero line.
        for x in LEFT..PLOT_WIDTH - RIGHT {
            put(&mut img, i64::from(x), i64::from(y0), GRID);
            put(&mut img, i64::from(x), i64::from(y1), GRID);
        }
        for y in y0..=y1 {
            put(&mut img, i64::from(LEFT), i64::from(y), GRID);
            put(&mut img, i64::from(PLOT_WIDTH - RIGHT), i64::from(y), GRID);
        }
        if lo < 0.0 && hi > 0.0 {
            let y = y_of(0.0).round() as i64;
            for x in (LEFT..PLOT_WIDTH - RIGHT).step_by(4) {
                put(&mut img, i64::from(x), y, GRID);
            }
        }
        text(&mut img, 10, y0 + 4, data.names[d], BLACK);
        let hi_label = number(hi);
        let lo_label = number(lo);
        text(
            &mut img,
            LEFT - 6 - text_width(&hi_label),
            y0 + 2,
            &hi_label,
            BLACK,
        );
        text(
            &mut img,
            LEFT - 6 - text_width(&lo_label),
            y1 - 15,
            &lo_label,
            BLACK,
        );
        for (series, color) in [(data.recorded, RECORDED), (data.replayed, REPLAYED)] {
            let mut previous: Option<(f64, f64)> = None;
            for i in 0..steps {
                let Some(v) = value(series, i).filter(|v| v.is_finite()) else {
                    previous = None;
                    continue;
                };
                let point = (x_of(data.times_s[i]), y_of(v));
                match previous {
                    Some(p) => line(&mut img, p, point, color),
                    None => line(&mut img, point, point, color),
                }
                previous = Some(point);
            }
        }
    }
    let axis_y = TOP + dims as u32 * PANEL_HEIGHT + 6;
    text(&mut img, LEFT, axis_y, "0", BLACK);
    let end = format!("{t_end:.1} S");
    text(
        &mut img,
        PLOT_WIDTH - RIGHT - text_width(&end),
        axis_y,
        &end,
        BLACK,
    );
    let label = "TIME SINCE THE FIRST STEP (S)";
    text(
        &mut img,
        LEFT + (PLOT_WIDTH - LEFT - RIGHT - text_width(label)) / 2,
        axis_y + 18,
        label,
        BLACK,
    );
    img
}
