//! What this CPU can run, detected once at run time.
//!
//! AMX needs more than CPUID: Linux hands out the 8 KiB tile-data state only to processes that
//! ask for it (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), and an AMX instruction
//! without that permission kills the process with SIGILL. [`features`] asks once; AMX counts as
//! available only if the kernel said yes.

use std::sync::OnceLock;

/// The instruction sets the kernels choose between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// AVX-512 Foundation: the f32 GEMM micro-kernel, vector exp, row ops.
    pub avx512f: bool,
    /// AVX-512 BF16 (`vcvtne2ps2bf16`, `vdpbf16ps`): f32 → bf16 rounding in packing.
    pub avx512bf16: bool,
    /// AMX tiles with bf16 dot products, and the OS's permission to use them.
    pub amx_bf16: bool,
}

/// Environment variable that caps the instruction sets used: `scalar`, `avx512f` (AVX-512
/// Foundation only: no BF16 instructions, no AMX), `avx512` (no AMX), or unset for everything
/// the CPU has. For comparisons and for testing the fallbacks.
pub const ISA_ENV: &str = "ZOETROPE_ISA";

/// The detected features (after [`ISA_ENV`]'s cap), computed on first call.
pub fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(|| {
        let cap = std::env::var(ISA_ENV).unwrap_or_default();
        detect(cap.trim())
    })
}

#[cfg(target_arch = "x86_64")]
fn detect(cap: &str) -> Features {
    let avx512f = is_x86_feature_detected!("avx512f") && cap != "scalar";
    let avx512bf16 = avx512f && cap != "avx512f" && is_x86_feature_detected!("avx512bf16");
    let amx_bf16 = avx512f
        && !matches!(cap, "avx512" | "avx512f")
        && cpuid_amx_bf16()
        && request_amx_permission();
    Features {
        avx512f,
        avx512bf16,
        amx_bf16,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect(_cap: &str) -> Features {
    Features {
        avx512f: false,
        avx512bf16: false,
        amx_bf16: false,
    }
}

/// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-BF16 (EDX bit 22). (`is_x86_feature_detected!`
/// does not know AMX on stable Rust.)
#[cfg(target_arch = "x86_64")]
fn cpuid_amx_bf16() -> bool {
    // Leaf 7 is valid when the maximum leaf is at least 7.
    let max = std::arch::x86_64::__cpuid(0).eax;
    if max < 7 {
        return false;
    }
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << 22) != 0
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; true if granted.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_amx_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain syscall with two integer arguments; it changes only this process's
    // permitted xsave state and clobbers rcx/r11 as every syscall does.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_amx_permission() -> bool {
    false
}

/// One line for logs and benchmark tables, e.g. `avx512f avx512bf16 amx-bf16`.
pub fn describe() -> String {
    let f = features();
    let mut parts = Vec::new();
    if f.avx512f {
        parts.push("avx512f");
    }
    if f.avx512bf16 {
        parts.push("avx512bf16");
    }
    if f.amx_bf16 {
        parts.push("amx-bf16");
    }
    if parts.is_empty() {
        parts.push("scalar");
    }
    parts.join(" ")
}
