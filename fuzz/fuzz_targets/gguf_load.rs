//! Arbitrary bytes as a GGUF file: the header parser, the model config and tokenizer built from
//! its metadata, and the dequantisation of its (small) tensors must return errors, never panic,
//! hang or allocate beyond what the input can justify.
#![no_main]

use headhunt_engine::gguf::{dequantize, GgufHeader};
use headhunt_engine::{ModelConfig, Tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = GgufHeader::parse(data) else { return };
    let _ = ModelConfig::from_gguf(&header);
    let _ = Tokenizer::from_gguf(&header).map(|t| t.encode("Hello, world! 123 ünï", true));
    for info in header.tensors.values() {
        if info.n_bytes <= 1 << 16 {
            let _ = dequantize(info.dtype, &data[info.offset..info.offset + info.n_bytes], &info.shape);
        }
    }
});
