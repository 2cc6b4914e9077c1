//! A bounds-checked reader for the GGUF container (llama.cpp's model file format).
//!
//! Every length, count and offset in the header is checked against the bytes that are really
//! there before anything is allocated, so a truncated or hostile file produces an error, never a
//! panic or an allocation sized by an unchecked header value. Tensor data stays in the memory map:
//! weight matrices view it where it is (`matrix`), small tensors are dequantised through candle's
//! kernels, which cover every GGML quant type.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
/// Arrays nested deeper than this are refused: real files nest at most once.
const MAX_VALUE_DEPTH: usize = 4;
const MAX_TENSOR_DIMS: usize = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(v) => write!(f, "[{} items]", v.len()),
            Value::Bool(b) => write!(f, "{b}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            other => write!(f, "{}", other.as_i64().unwrap_or_default()),
        }
    }
}

/// The GGML tensor types headhunt can dequantise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    /// OCP microscaling FP4 (gpt-oss's experts): 32 E2M1 values sharing a power-of-two scale.
    Mxfp4,
}

impl GgmlType {
    fn from_id(id: u32) -> std::result::Result<Self, String> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            30 => Self::BF16,
            39 => Self::Mxfp4,
            other => return Err(format!("tensor type {other} is not supported (IQ and ternary quants are not)")),
        })
    }

    /// (elements per block, bytes per block).
    pub fn block_layout(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::Mxfp4 => (32, 17),
        }
    }

    /// candle's name for the type, where candle reads it (not MXFP4).
    pub(crate) fn candle(self) -> Option<candle_core::quantized::GgmlDType> {
        use candle_core::quantized::GgmlDType as C;
        Some(match self {
            Self::F32 => C::F32,
            Self::F16 => C::F16,
            Self::BF16 => C::BF16,
            Self::Q4_0 => C::Q4_0,
            Self::Q4_1 => C::Q4_1,
            Self::Q5_0 => C::Q5_0,
            Self::Q5_1 => C::Q5_1,
            Self::Q8_0 => C::Q8_0,
            Self::Q8_1 => C::Q8_1,
            Self::Q2K => C::Q2K,
            Self::Q3K => C::Q3K,
            Self::Q4K => C::Q4K,
            Self::Q5K => C::Q5K,
            Self::Q6K => C::Q6K,
            Self::Q8K => C::Q8K,
            Self::Mxfp4 => return None,
        })
    }
}

/// Where a tensor lives in the file and what it is.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Row-major shape (the reverse of GGML's `ne` order): a linear layer is `[out, in]`.
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    /// Absolute byte offset of the tensor's data in its file.
    pub offset: usize,
    pub n_bytes: usize,
    /// Which file of a split GGUF holds it (0 for a single file).
    pub part: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed GGUF header: metadata and the tensor directory, every offset validated.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl GgufHeader {
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Parse and validate a whole GGUF file held in memory.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err("bad magic (expected `GGUF`)".into());
        }
        let version = r.u32()?;
        if !(1..=3).contains(&version) {
            return Err(format!("unsupported GGUF version {version}"));
        }
        let wide = version >= 2;
        let n_tensors = r.len(wide)?;
        let n_kv = r.len(wide)?;
        // Each metadata entry needs at least a key length, a type and one byte; each tensor entry
        // a name length, a dimension count, a type and an offset.
        let key_len = if wide { 8 } else { 4 };
        let needed = (n_kv as u128) * (key_len + 5) + (n_tensors as u128) * (key_len + 16);
        if needed > r.remaining() as u128 {
            return Err(format!(
                "header declares {n_tensors} tensors and {n_kv} metadata entries, more than the file can hold"
            ));
        }

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string(wide)?;
            let ty = r.u32()?;
            let value = r.value(ty, wide, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("duplicate metadata key `{key}`"));
            }
        }

        let mut infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string(wide)?;
            let n_dims = r.u32()? as usize;
            if n_dims == 0 || n_dims > MAX_TENSOR_DIMS {
                return Err(format!("tensor `{name}` has {n_dims} dimensions"));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(r.len(wide)?);
            }
            let dtype = GgmlType::from_id(r.u32()?).map_err(|e| format!("`{name}`: {e}"))?;
            let offset = r.u64()?;
            infos.push((name, ne, dtype, offset));
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
                _ => return Err(format!("general.alignment {v} is not a power of two")),
            },
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;

        let mut tensors = BTreeMap::new();
        for (name, ne, dtype, offset) in infos {
            let (block, block_bytes) = dtype.block_layout();
            let mut n_elements: u64 = 1;
            for &d in &ne {
                n_elements = n_elements
                    .checked_mul(d)
                    .ok_or_else(|| format!("tensor `{name}` has an impossible shape {ne:?}"))?;
            }
            if ne[0] % block as u64 != 0 {
                return Err(format!(
                    "tensor `{name}`: row length {} is not a multiple of the {dtype:?} block ({block})",
                    ne[0]
                ));
            }
            let n_bytes = (n_elements / block as u64)
                .checked_mul(block_bytes as u64)
                .ok_or_else(|| format!("tensor `{name}` is too large"))?;
            if offset % alignment != 0 {
                return Err(format!("tensor `{name}` is not aligned to {alignment} bytes"));
            }
            let start = data_start
                .checked_add(offset)
                .filter(|s| s.checked_add(n_bytes).is_some_and(|end| end <= file_len))
                .ok_or_else(|| {
                    format!(
                        "tensor `{name}` ({n_bytes} bytes at data offset {offset}) runs past the end of the file ({file_len} bytes): the file is truncated"
                    )
                })?;
            let shape = ne.iter().rev().map(|&d| d as usize).collect();
            let info = TensorInfo {
                shape,
                dtype,
                offset: start as usize,
                n_bytes: n_bytes as usize,
                part: 0,
            };
            if tensors.insert(name.clone(), info).is_some() {
                return Err(format!("duplicate tensor `{name}`"));
            }
        }
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "unexpected end of file at byte {} (needed {n} more bytes): the file is truncated",
                self.pos
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count or length: 32-bit in GGUF v1, 64-bit after.
    fn len(&mut self, wide: bool) -> std::result::Result<u64, String> {
        if wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn string(&mut self, wide: bool) -> std::result::Result<String, String> {
        let n = self.len(wide)?;
        if n > self.remaining() as u64 {
            return Err(format!("a string of {n} bytes at byte {} runs past the end of the file", self.pos));
        }
        let raw = self.take(n as usize)?;
        // Some writers NUL-terminate; GGUF strings are not.
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    fn value(&mut self, ty: u32, wide: bool, depth: usize) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("bad boolean byte {b}")),
            },
            8 => Value::String(self.string(wide)?),
            9 => {
                if depth >= MAX_VALUE_DEPTH {
                    return Err("metadata arrays nested too deeply".into());
                }
                let elem_ty = self.u32()?;
                let n = self.len(wide)?;
                let min_size: u64 = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    8 => {
                        if wide {
                            8
                        } else {
                            4
                        }
                    }
                    9 => 12,
                    other => return Err(format!("unknown metadata type {other}")),
                };
                if n.saturating_mul(min_size) > self.remaining() as u64 {
                    return Err(format!("an array of {n} elements runs past the end of the file"));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, wide, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata type {other}")),
        })
    }
}

/// A GGUF model on disk: its header and a memory map of each file's tensor data, shared with the
/// weight matrices that view it. A split GGUF (llama.cpp's `gguf-split`: `NAME-00001-of-0000N.gguf`
/// and its siblings, `split.count` in each header) is opened from its first part, and its parts'
/// tensors are one table.
pub struct GgufFile {
    path: PathBuf,
    maps: Vec<Arc<memmap2::Mmap>>,
    pub header: GgufHeader,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let (map, mut header) = Self::open_part(path)?;
        let mut maps = vec![Arc::new(map)];
        let count = header.meta("split.count").and_then(Value::as_u64).unwrap_or(1) as usize;
        if count > 1 {
            let bad = |reason: String| Error::Gguf {
                path: path.to_owned(),
                reason,
            };
            if header.meta("split.no").and_then(Value::as_u64) != Some(0) {
                return Err(bad(
                    "this is not the first part of a split GGUF: open the file named -00001-of-...".into()
                ));
            }
            for (no, part_path) in split_siblings(path, count).map_err(bad)?.into_iter().enumerate().skip(1) {
                let (map, part) = Self::open_part(&part_path)?;
                if part.meta("split.no").and_then(Value::as_u64) != Some(no as u64) {
                    return Err(bad(format!(
                        "{} does not say it is part {} of {count}",
                        part_path.display(),
                        no + 1
                    )));
                }
                for (name, mut info) in part.tensors {
                    info.part = no;
                    if header.tensors.insert(name.clone(), info).is_some() {
                        return Err(bad(format!("tensor `{name}` is in two parts")));
                    }
                }
                maps.push(Arc::new(map));
            }
            let expected = header.meta("split.tensors.count").and_then(Value::as_u64);
            if let Some(n) = expected.filter(|&n| n as usize != header.tensors.len()) {
                return Err(bad(format!(
                    "the {count} parts hold {} tensors, the first part announces {n}",
                    header.tensors.len()
                )));
            }
        }
        Ok(GgufFile {
            path: path.to_owned(),
            maps,
            header,
        })
    }

    fn open_part(path: &Path) -> Result<(memmap2::Mmap, GgufHeader)> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process; a file truncated underneath
        // us by another process is outside what headhunt can defend against. The pages are
        // mapped now (`populate`), in one pass, rather than by a page fault each during the first
        // forward pass (costly in virtual machines).
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = GgufHeader::parse(&map).map_err(|reason| Error::Gguf {
            path: path.to_owned(),
            reason,
        })?;
        // The header is parsed into owned values: its pages (a large vocabulary's strings) need
        // not stay in memory.
        let data_start = header.tensors.values().map(|t| t.offset).min().unwrap_or(map.len());
        crate::matrix::release_range(&map, 0, data_start);
        Ok((map, header))
    }

    /// The memory map of the file that holds a tensor.
    pub fn map(&self, info: &TensorInfo) -> Arc<memmap2::Mmap> {
        self.maps[info.part].clone()
    }

    /// How many files the model is stored in.
    pub fn parts(&self) -> usize {
        self.maps.len()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.header.meta(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor_info(name)
    }

    /// Dequantise a tensor to f32, row-major. Returns the data and its shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.tensor_info(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_owned(),
            path: self.path.clone(),
        })?;
        let raw = &self.maps[info.part][info.offset..info.offset + info.n_bytes];
        let data = dequantize(info.dtype, raw, &info.shape).map_err(|reason| Error::Gguf {
            path: self.path.clone(),
            reason: format!("tensor `{name}`: {reason}"),
        })?;
        Ok((data, info.shape.clone()))
    }
}

/// The `count` files of a split GGUF, from its first: `NAME-00001-of-0000N.gguf` and its siblings.
pub fn split_siblings(first: &Path, count: usize) -> std::result::Result<Vec<PathBuf>, String> {
    let name = first.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let suffix = format!("-00001-of-{count:05}.gguf");
    let Some(stem) = name.strip_suffix(&suffix) else {
        return Err(format!(
            "the header says it is one of {count} parts, but the name does not end in {suffix}"
        ));
    };
    let paths: Vec<PathBuf> = (1..=count)
        .map(|k| first.with_file_name(format!("{stem}-{k:05}-of-{count:05}.gguf")))
        .collect();
    match paths.iter().find(|p| !p.exists()) {
        Some(missing) => Err(format!("part {} of the split GGUF is missing", missing.display())),
        None => Ok(paths),
    }
}

/// Dequantise raw GGML blocks to f32.
pub fn dequantize(dtype: GgmlType, raw: &[u8], shape: &[usize]) -> std::result::Result<Vec<f32>, String> {
    if dtype == GgmlType::F32 {
        return Ok(raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4-byte chunk")))
            .collect());
    }
    let Some(candle_type) = dtype.candle() else {
        // Types candle lacks: headhunt's own row kernels, row by row.
        let kernels =
            crate::kernels::row_kernels(dtype, crate::cpu::Isa::Portable).ok_or_else(|| format!("{dtype:?} cannot be dequantised"))?;
        let (cols, (block, bytes)) = (shape.last().copied().unwrap_or(0), dtype.block_layout());
        let row_bytes = cols / block * bytes;
        if cols == 0 || !cols.is_multiple_of(block) || !raw.len().is_multiple_of(row_bytes) {
            return Err(format!("{dtype:?}: {} bytes are not whole rows of {cols} values", raw.len()));
        }
        let mut out = vec![0.0f32; raw.len() / row_bytes * cols];
        for (row, o) in raw.chunks_exact(row_bytes).zip(out.chunks_exact_mut(cols)) {
            (kernels.dequantize)(row, o);
        }
        return Ok(out);
    };
    let device = candle_core::Device::Cpu;
    let ggml_dims: Vec<usize> = shape.to_vec();
    let q = candle_core::quantized::ggml_file::qtensor_from_ggml(candle_type, raw, ggml_dims, &device).map_err(|e| e.to_string())?;
    q.dequantize(&device)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())
}

/// Writes GGUF files with f32 tensors: small synthetic models for tests, fuzzing seeds, and
/// exports. Tensor shapes are row-major (as [`TensorInfo::shape`]).
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn meta(mut self, key: &str, value: Value) -> Self {
        self.metadata.push((key.to_owned(), value));
        self
    }

    pub fn tensor(mut self, name: &str, shape: &[usize], data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor `{name}`: shape does not match data"
        );
        self.tensors.push((name.to_owned(), shape.to_vec(), data));
        self
    }

    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => Self::put_str(out, s),
            Value::Array(items) => {
                out.extend(items.first().map_or(4, Self::type_id).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| Self::put_value(out, i));
            }
        }
    }

    /// The file's bytes (GGUF v3, 32-byte alignment).
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = DEFAULT_ALIGNMENT as usize;
        let mut out = MAGIC.to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            Self::put_str(&mut out, k);
            out.extend(Self::type_id(v).to_le_bytes());
            Self::put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for (name, shape, data) in &self.tensors {
            Self::put_str(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            shape.iter().rev().for_each(|&d| out.extend((d as u64).to_le_bytes()));
            out.extend(0u32.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += ((data.len() * 4).div_ceil(align) * align) as u64;
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for (_, _, data) in &self.tensors {
            data.iter().for_each(|x| out.extend(x.to_le_bytes()));
            out.resize(out.len().next_multiple_of(align), 0);
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()).map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_small_file() {
        let bytes = GgufWriter::new()
            .meta("general.architecture", Value::String("llama".into()))
            .meta("llama.block_count", Value::U32(2))
            .tensor("w", &[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .to_bytes();
        let h = GgufHeader::parse(&bytes).unwrap();
        assert_eq!(h.metadata["llama.block_count"].as_u64(), Some(2));
        let info = &h.tensors["w"];
        assert_eq!(info.shape, vec![2, 3]);
        let raw = &bytes[info.offset..info.offset + info.n_bytes];
        assert_eq!(
            dequantize(info.dtype, raw, &info.shape).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = GgufWriter::new()
            .meta("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into()); 4]))
            .tensor("w", &[4], vec![0.0; 4])
            .to_bytes();
        GgufHeader::parse(&bytes).unwrap();
        for cut in 0..bytes.len() - 1 {
            // Cutting only padding after the last tensor is harmless; anything else must fail.
            if let Ok(h) = GgufHeader::parse(&bytes[..cut]) {
                let end = h.tensors.values().map(|t| t.offset + t.n_bytes).max().unwrap();
                assert!(end <= cut, "cut at {cut} accepted");
            }
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        let err = GgufHeader::parse(&bytes).unwrap_err();
        assert!(err.contains("more than the file can hold"), "{err}");

        // A metadata array that claims 2^60 elements.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.push(b'k');
        bytes.extend(9u32.to_le_bytes());
        bytes.extend(4u32.to_le_bytes());
        bytes.extend((1u64 << 60).to_le_bytes());
        let err = GgufHeader::parse(&bytes).unwrap_err();
        assert!(err.contains("runs past the end"), "{err}");
    }

    #[test]
    fn bad_alignment_and_shapes_are_errors() {
        let bytes = GgufWriter::new().meta("general.alignment", Value::U32(0)).to_bytes();
        assert!(GgufHeader::parse(&bytes).unwrap_err().contains("alignment"));
        // Patch a tensor entry's type and dims in place: the directory entry of tensor "w"
        // starts after the 24-byte preamble (no metadata): name (8 + 1), n_dims (4), dims.
        let good = GgufWriter::new().tensor("w", &[1, 32], vec![0.0; 32]).to_bytes();
        let dims_at = 24 + 9 + 4;
        let type_at = dims_at + 16;
        // Q8_0 rows must be whole 32-element blocks.
        let mut bytes = good.clone();
        bytes[dims_at..dims_at + 8].copy_from_slice(&31u64.to_le_bytes());
        bytes[type_at..type_at + 4].copy_from_slice(&8u32.to_le_bytes());
        assert!(GgufHeader::parse(&bytes).unwrap_err().contains("block"));
        // A shape whose element count overflows.
        let mut bytes = good;
        bytes[dims_at..dims_at + 16].fill(0xff);
        assert!(GgufHeader::parse(&bytes).is_err());
    }
}
