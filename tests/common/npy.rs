//! Minimal `.npy` reader for the reference fixtures: little-endian `f4` and `u1` arrays in C
//! order, format versions 1 to 3. Include it with `#[path = "common/npy.rs"] mod npy;`.
#![allow(dead_code)]

use std::path::Path;

/// An array read from a `.npy` file: its shape and its values in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// Reads a little-endian float32 (`<f4`) array.
pub fn read_f32(path: &Path) -> Result<NpyArray<f32>, String> {
    let (shape, payload) = read_raw(path, &["<f4"])?;
    let data = payload
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(NpyArray { shape, data })
}

/// Reads an unsigned byte (`|u1`) array.
pub fn read_u8(path: &Path) -> Result<NpyArray<u8>, String> {
    let (shape, payload) = read_raw(path, &["|u1", "<u1"])?;
    Ok(NpyArray {
        shape,
        data: payload,
    })
}

fn read_raw(path: &Path, accepted_descr: &[&str]) -> Result<(Vec<usize>, Vec<u8>), String> {
    let fail = |message: String| format!("{}: {message}", path.display());
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fail("not a .npy file (bad magic)".into()));
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        version => return Err(fail(format!("unsupported .npy version {version}"))),
    };
    let data_start = header_start + header_len;
    let header = bytes
        .get(header_start..data_start)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| fail("truncated or non-text header".into()))?;

    let descr = dict_value(header, "descr")
        .ok_or_else(|| fail(format!("no descr in header {header:?}")))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if !accepted_descr.contains(&descr) {
        return Err(fail(format!(
            "dtype {descr}, expected one of {accepted_descr:?}"
        )));
    }
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| fail(format!("no fortran_order in header {header:?}")))?;
    if fortran != "False" {
        return Err(fail("Fortran-order arrays are not supported".into()));
    }
    let shape_text = dict_value(header, "shape")
        .ok_or_else(|| fail(format!("no shape in header {header:?}")))?;
    let shape = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|e| fail(format!("shape {shape_text}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let item_size = if descr.ends_with('4') { 4 } else { 1 };
    let expected = shape.iter().product::<usize>() * item_size;
    let payload = &bytes[data_start..];
    if payload.len() != expected {
        return Err(fail(format!(
            "shape {shape:?} needs {expected} bytes of data, file has {}",
            payload.len()
        )));
    }
    Ok((shape, payload.to_vec()))
}

/// The text of `'key': value` in a header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let quoted = format!("'{key}':");
    let rest = header[header.find(&quoted)? + quoted.len()..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}
