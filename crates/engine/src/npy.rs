//! NumPy `.npy` arrays and `.npz` archives: how tensors leave headhunt and how reference values
//! come in. Little-endian f32, f64, i32, i64 and u32, C order.

use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// An n-dimensional array read from a `.npy` file, widened to f64 or i64.
#[derive(Debug, Clone)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

#[derive(Debug, Clone)]
pub enum NpyData {
    Float(Vec<f64>),
    Int(Vec<i64>),
}

impl NpyArray {
    pub fn as_f32(&self) -> Vec<f32> {
        match &self.data {
            NpyData::Float(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::Int(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub fn as_i64(&self) -> Vec<i64> {
        match &self.data {
            NpyData::Float(v) => v.iter().map(|&x| x as i64).collect(),
            NpyData::Int(v) => v.clone(),
        }
    }
}

/// Element types headhunt writes.
pub trait NpyElement: Copy {
    const DESCR: &'static str;
    fn write_le(self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($t:ty, $d:expr) => {
        impl NpyElement for $t {
            const DESCR: &'static str = $d;
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
element!(f32, "<f4");
element!(f64, "<f8");
element!(i32, "<i4");
element!(i64, "<i8");
element!(u32, "<u4");

/// Serialise one array as `.npy` bytes (format 1.0).
pub fn to_npy<T: NpyElement>(shape: &[usize], data: &[T]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy: shape does not match data");
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape_str}, }}", T::DESCR);
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes, '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &x in data {
        x.write_le(&mut out);
    }
    out
}

/// Parse `.npy` bytes.
pub fn from_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy file".into());
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes.get(start..start + hlen).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header.find(&format!("'{key}'")).ok_or(format!("header lacks {key}"))?;
        Ok(header[at + key.len() + 2..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr")?.trim_start_matches('\'');
    let descr = &descr[..descr.find('\'').ok_or("bad descr")?];
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_str = field("shape")?;
    let shape_str = &shape_str[1..shape_str.find(')').ok_or("bad shape")?];
    let shape: Vec<usize> = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|e| e.to_string()))
        .collect::<std::result::Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    let width = match descr {
        "<f4" | "<i4" | "<u4" => 4,
        "<f8" | "<i8" => 8,
        "|u1" | "|i1" | "|b1" => 1,
        other => return Err(format!("unsupported dtype {other}")),
    };
    if body.len() < n * width {
        return Err("array data is truncated".into());
    }
    let chunks = body[..n * width].chunks_exact(width);
    let data = match descr {
        "<f4" => NpyData::Float(chunks.map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect()),
        "<f8" => NpyData::Float(chunks.map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()),
        "<i4" => NpyData::Int(chunks.map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect()),
        "<u4" => NpyData::Int(chunks.map(|b| u32::from_le_bytes(b.try_into().unwrap()) as i64).collect()),
        "<i8" => NpyData::Int(chunks.map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()),
        "|u1" | "|b1" => NpyData::Int(chunks.map(|b| b[0] as i64).collect()),
        _ => NpyData::Int(chunks.map(|b| b[0] as i8 as i64).collect()),
    };
    Ok(NpyArray { shape, data })
}

pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_npy(&bytes).map_err(|reason| Error::Checkpoint {
        path: path.to_owned(),
        reason,
    })
}

/// Every array of an `.npz` archive, by name (without the `.npy` suffix).
pub fn read_npz(path: &Path) -> Result<std::collections::BTreeMap<String, NpyArray>> {
    let bad = |reason: String| Error::Checkpoint {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut out = std::collections::BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().map_err(|e| bad(e.to_string()))?.trim_end_matches(".npy").to_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
        out.insert(name.clone(), from_npy(&bytes).map_err(|e| bad(format!("{name}: {e}")))?);
    }
    Ok(out)
}

/// Writes named arrays into an `.npz` (deflate-compressed) archive.
pub struct NpzWriter<W: Write + Seek> {
    zip: zip::ZipWriter<W>,
}

impl NpzWriter<std::fs::File> {
    pub fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(NpzWriter {
            zip: zip::ZipWriter::new(file),
        })
    }
}

impl<W: Write + Seek> NpzWriter<W> {
    pub fn add<T: NpyElement>(&mut self, name: &str, shape: &[usize], data: &[T]) -> Result<()> {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(data.len() * 8 > u32::MAX as usize / 2);
        let io = |e: std::io::Error| Error::io(name, e);
        self.zip
            .start_file(format!("{name}.npy"), options)
            .map_err(|e| io(std::io::Error::other(e)))?;
        self.zip.write_all(&to_npy(shape, data)).map_err(io)
    }

    pub fn finish(self) -> Result<W> {
        self.zip.finish().map_err(|e| Error::io("npz", std::io::Error::other(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        let bytes = to_npy(&[2, 3, 4], &data);
        assert_eq!((bytes.len() - data.len() * 4) % 64, 0, "header padded to 64 bytes");
        let back = from_npy(&bytes).unwrap();
        assert_eq!(back.shape, vec![2, 3, 4]);
        assert_eq!(back.as_f32(), data);
        let ints = from_npy(&to_npy(&[3], &[1i64, -2, 3])).unwrap();
        assert_eq!(ints.as_i64(), vec![1, -2, 3]);
    }

    #[test]
    fn npz_round_trip() {
        let mut w = NpzWriter {
            zip: zip::ZipWriter::new(std::io::Cursor::new(Vec::new())),
        };
        w.add("a", &[2], &[1.0f32, 2.0]).unwrap();
        w.add("b", &[1, 1], &[7u32]).unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let dir = std::env::temp_dir().join(format!("hh-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.npz");
        std::fs::write(&path, bytes).unwrap();
        let arrays = read_npz(&path).unwrap();
        assert_eq!(arrays["a"].as_f32(), vec![1.0, 2.0]);
        assert_eq!(arrays["b"].shape, vec![1, 1]);
        std::fs::remove_dir_all(dir).ok();
    }
}
