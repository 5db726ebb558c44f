//! The contact sheet: sample frames exactly as the policy sees them (224 × 224 after the
//! resize), tiled into one PNG so the installer can check framing, focus and exposure.

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

#[cfg(test)]
mod tests {
    use super::*;

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
