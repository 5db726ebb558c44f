//! The contact sheet: sample frames exactly as the policy sees them (224 × 224 after the
//! resize), tiled into one PNG so the installer can check framing, focus and exposure.

use std::path::Path;

use vla_rt::preprocess::RgbImage;

/// Pixels of background between and around tiles.
pub const GAP: u32 = 4;
const BACKGROUND: [u8; 3] = [32, 32, 32];

/// Where tile `index` of a sheet with `columns` columns starts, for tiles of `tile` pixels.
pub fn tile_origin(index: usize, columns: usize, tile: u32) -> (u32, u32) {
    let col = (index % columns) as u32;
    let row = (index / columns) as u32;
    (GAP + col * (tile + GAP), GAP + row * (tile + GAP))
}

/// Lays out square tiles of equal size in a grid of at most `max_columns` columns.
/// Returns `None` when there are no tiles or their sizes differ.
pub fn compose(tiles: &[RgbImage], max_columns: usize) -> Option<RgbImage> {
    let first = tiles.first()?;
    let tile = first.width;
    if tiles
        .iter()
        .any(|t| t.width != tile || t.height != tile || t.data.len() != (tile * tile * 3) as usize)
    {
        return None;
    }
    let columns = max_columns.clamp(1, tiles.len());
    let rows = tiles.len().div_ceil(columns);
    let width = GAP + columns as u32 * (tile + GAP);
    let height = GAP + rows as u32 * (tile + GAP);
    let mut data = BACKGROUND.repeat((width * height) as usize);
    for (i, t) in tiles.iter().enumerate() {
        let (x0, y0) = tile_origin(i, columns, tile);
        for y in 0..tile {
            let src = (y * tile * 3) as usize;
            let dst = (((y0 + y) * width + x0) * 3) as usize;
            let len = (tile * 3) as usize;
            data[dst..dst + len].copy_from_slice(&t.data[src..src + len]);
        }
    }
    Some(RgbImage {
        width,
        height,
        data,
    })
}

/// Tiles on a sheet: enough to see framing and exposure drift, small enough to look at.
pub const MAX_TILES: usize = 8;
/// Columns of the sheet.
pub const COLUMNS: usize = 4;

/// Indices of at most `tiles` frames out of `count`, evenly spread from the first to the last.
pub fn pick_frames(count: usize, tiles: usize) -> Vec<usize> {
    let tiles = tiles.min(count);
    match tiles {
        0 => Vec::new(),
        1 => vec![0],
        _ => (0..tiles).map(|i| i * (count - 1) / (tiles - 1)).collect(),
    }
}

/// Writes `sheet` as an RGB8 PNG.
pub fn write_png(sheet: &RgbImage, path: &Path) -> Result<(), image::ImageError> {
    image::save_buffer_with_format(
        path,
        &sheet.data,
        sheet.width,
        sheet.height,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_frames_span_first_to_last_without_repeats() {
        assert_eq!(pick_frames(100, 8), vec![0, 14, 28, 42, 56, 70, 84, 99]);
        assert_eq!(pick_frames(3, 8), vec![0, 1, 2]);
        assert_eq!(pick_frames(1, 8), vec![0]);
        assert!(pick_frames(0, 8).is_empty());
    }

    fn solid(size: u32, rgb: [u8; 3]) -> RgbImage {
        RgbImage {
            width: size,
            height: size,
            data: rgb.repeat((size * size) as usize),
        }
    }

    #[test]
    fn tiles_land_at_their_origins_with_background_between() {
        let tiles = [
            solid(8, [255, 0, 0]),
            solid(8, [0, 255, 0]),
            solid(8, [0, 0, 255]),
        ];
        let sheet = compose(&tiles, 2).unwrap();
        assert_eq!(
            (sheet.width, sheet.height),
            (GAP + 2 * (8 + GAP), GAP + 2 * (8 + GAP))
        );
        let px = |x: u32, y: u32| {
            let i = ((y * sheet.width + x) * 3) as usize;
            [sheet.data[i], sheet.data[i + 1], sheet.data[i + 2]]
        };
        for (i, t) in tiles.iter().enumerate() {
            let (x0, y0) = tile_origin(i, 2, 8);
            assert_eq!(px(x0, y0), t.data[..3]);
            assert_eq!(px(x0 + 7, y0 + 7), t.data[..3]);
        }
        assert_eq!(px(0, 0), BACKGROUND);
        let (x3, y3) = tile_origin(3, 2, 8);
        assert_eq!(
            px(x3, y3),
            BACKGROUND,
            "the empty fourth cell stays background"
        );
    }

    #[test]
    fn mismatched_tiles_are_refused() {
        assert!(compose(&[solid(8, [0; 3]), solid(6, [0; 3])], 4).is_none());
        assert!(compose(&[], 4).is_none());
    }
}
