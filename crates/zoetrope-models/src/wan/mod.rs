//! Wan 2.1 text-to-video (Wan2.1-T2V-1.3B and 14B share this code), computed as diffusers computes
//! it. Fixtures: tests/fixtures/wan (made by tools/parity/make_wan_fixtures.py).

pub mod keys;
pub mod pipeline;
pub mod text;
pub mod transformer;
pub mod vae;
