//! The device layer: one GPU context with one stream, device buffers, NVRTC-compiled modules
//! (cached on disk by source hash and architecture), kernel launches, events, CUDA graphs and
//! cuBLAS, all through the driver API loaded at run time so the binary runs without CUDA.

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::sys as cublas;
use cudarc::driver::sys as cu;
use cudarc::nvrtc::sys as nvrtc;
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::Mutex;

fn cu_error_name(r: cu::CUresult) -> String {
    let mut p: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuGetErrorString writes a pointer to a static string or leaves it null.
    unsafe { cu::cuGetErrorString(r, &mut p) };
    if p.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: the driver returned a NUL-terminated static string.
        format!("{r:?} ({})", unsafe { CStr::from_ptr(p) }.to_string_lossy())
    }
}

/// Turns a driver result into an error naming the call.
pub fn check(r: cu::CUresult, what: &str) -> Result<()> {
    if r == cu::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(anyhow!("CUDA {what} failed: {}", cu_error_name(r)))
    }
}

fn check_blas(r: cublas::cublasStatus_t, what: &str) -> Result<()> {
    if r == cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(anyhow!("cuBLAS {what} failed: {r:?}"))
    }
}

/// Whether the CUDA driver library can be loaded at all (false on machines without NVIDIA's
/// driver); checked before any call so that the error is a sentence, not a panic.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cu::is_culib_present() }
}

/// A device allocation, freed on drop.
pub struct Buf {
    pub ptr: u64,
    pub bytes: usize,
}

impl Buf {
    /// The address `offset` bytes in, for kernel arguments.
    pub fn at(&self, offset: usize) -> u64 {
        debug_assert!(offset <= self.bytes);
        self.ptr + offset as u64
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: ptr came from cuMemAlloc and is freed once.
            unsafe { cu::cuMemFree_v2(self.ptr) };
        }
    }
}

/// A kernel argument: anything passed by value to a `__global__` function.
pub trait Arg {
    fn ptr(&self) -> *mut c_void;
}
macro_rules! impl_arg {
    ($($t:ty),*) => {$(impl Arg for $t {
        fn ptr(&self) -> *mut c_void { self as *const $t as *mut c_void }
    })*};
}
impl_arg!(u64, i32, u32, f32);

pub struct Func(cu::CUfunction);

impl Func {
    /// (registers per thread, local-memory bytes per thread): spills show as local bytes.
    pub fn resources(&self) -> Result<(i32, i32)> {
        let (mut regs, mut local) = (0, 0);
        use cu::CUfunction_attribute::*;
        // SAFETY: live function handle, out-pointers owned here.
        unsafe {
            check(
                cu::cuFuncGetAttribute(&mut regs, CU_FUNC_ATTRIBUTE_NUM_REGS, self.0),
                "cuFuncGetAttribute",
            )?;
            check(
                cu::cuFuncGetAttribute(&mut local, CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, self.0),
                "cuFuncGetAttribute",
            )?;
        }
        Ok((regs, local))
    }
}

/// A compiled module and its kernels, looked up by name.
pub struct Module {
    module: cu::CUmodule,
    funcs: Mutex<HashMap<String, cu::CUfunction>>,
}

impl Module {
    pub fn func(&self, name: &str) -> Result<Func> {
        let mut f = self
            .funcs
            .lock()
            .map_err(|_| anyhow!("module lock poisoned"))?;
        if let Some(&h) = f.get(name) {
            return Ok(Func(h));
        }
        let c = CString::new(name)?;
        let mut h: cu::CUfunction = std::ptr::null_mut();
        // SAFETY: module is loaded; h receives the handle.
        check(
            unsafe { cu::cuModuleGetFunction(&mut h, self.module, c.as_ptr()) },
            &format!("finding kernel {name}"),
        )?;
        f.insert(name.to_string(), h);
        Ok(Func(h))
    }
}

pub struct Gpu {
    pub ctx: cu::CUcontext,
    pub stream: cu::CUstream,
    /// A second stream for work that overlaps the main one (weight dequantization at prefill).
    pub stream2: cu::CUstream,
    pub name: String,
    /// (major, minor) compute capability.
    pub cc: (i32, i32),
    pub sm_count: i32,
    blas: Mutex<Option<cublas::cublasHandle_t>>,
    modules: Mutex<HashMap<u64, &'static Module>>,
    /// Whether `launch_dep` launches with programmatic dependent launch (see `set_pdl`).
    pdl: std::sync::atomic::AtomicBool,
}

// SAFETY: the context and stream are used from one thread at a time (the CLI and bench), and the
// driver API is thread-safe for these handles.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Opens device 0. Fails with a clear message when there is no driver or no GPU.
    pub fn new() -> Result<Gpu> {
        if !driver_present() {
            bail!("--device cuda: the NVIDIA driver library (libcuda.so) was not found; install the NVIDIA driver or use the CPU backend");
        }
        // SAFETY: plain driver calls with out-pointers owned here.
        unsafe {
            check(cu::cuInit(0), "cuInit (is an NVIDIA GPU present?)")?;
            let mut n = 0;
            check(cu::cuDeviceGetCount(&mut n), "counting devices")?;
            if n == 0 {
                bail!("--device cuda: the driver sees no GPU");
            }
            let mut dev = 0;
            check(cu::cuDeviceGet(&mut dev, 0), "cuDeviceGet")?;
            let mut ctx = std::ptr::null_mut();
            check(
                cu::cuDevicePrimaryCtxRetain(&mut ctx, dev),
                "retaining the primary context",
            )?;
            check(cu::cuCtxSetCurrent(ctx), "cuCtxSetCurrent")?;
            let mut stream = std::ptr::null_mut();
            check(
                cu::cuStreamCreate(
                    &mut stream,
                    cu::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
                ),
                "creating a stream",
            )?;
            let mut stream2 = std::ptr::null_mut();
            check(
                cu::cuStreamCreate(
                    &mut stream2,
                    cu::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
                ),
                "creating a stream",
            )?;
            let mut name = [0 as std::ffi::c_char; 128];
            check(
                cu::cuDeviceGetName(name.as_mut_ptr(), 128, dev),
                "cuDeviceGetName",
            )?;
            let attr = |a| -> Result<i32> {
                let mut v = 0;
                check(
                    cu::cuDeviceGetAttribute(&mut v, a, dev),
                    "cuDeviceGetAttribute",
                )?;
                Ok(v)
            };
            use cu::CUdevice_attribute::*;
            let cc = (
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            );
            let sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            Ok(Gpu {
                ctx,
                stream,
                stream2,
                name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                cc,
                sm_count,
                blas: Mutex::new(None),
                modules: Mutex::new(HashMap::new()),
                pdl: std::sync::atomic::AtomicBool::new(false),
            })
        }
    }

    /// Makes this context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        // SAFETY: ctx is a retained primary context.
        check(unsafe { cu::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }

    pub fn alloc(&self, bytes: usize) -> Result<Buf> {
        let mut ptr = 0u64;
        if bytes > 0 {
            // SAFETY: out-pointer owned here.
            check(
                unsafe { cu::cuMemAlloc_v2(&mut ptr, bytes) },
                &format!("allocating {bytes} bytes"),
            )?;
        }
        Ok(Buf { ptr, bytes })
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: out-pointers owned here.
        check(
            unsafe { cu::cuMemGetInfo_v2(&mut free, &mut total) },
            "cuMemGetInfo",
        )?;
        Ok((free, total))
    }

    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<Buf> {
        let bytes = std::mem::size_of_val(data);
        let b = self.alloc(bytes)?;
        self.write(&b, 0, data)?;
        Ok(b)
    }

    /// Synchronous host-to-device copy into `dst` at byte `offset` (ordered after the stream's work).
    pub fn write<T: Copy>(&self, dst: &Buf, offset: usize, data: &[T]) -> Result<()> {
        let bytes = std::mem::size_of_val(data);
        if offset + bytes > dst.bytes {
            bail!(
                "device write of {bytes} bytes at {offset} overruns a {}-byte buffer",
                dst.bytes
            );
        }
        if bytes == 0 {
            return Ok(());
        }
        self.sync()?;
        // SAFETY: bounds checked above; data is a live host slice.
        check(
            unsafe { cu::cuMemcpyHtoD_v2(dst.at(offset), data.as_ptr() as *const c_void, bytes) },
            "host-to-device copy",
        )
    }

    /// Synchronous device-to-host copy of `n` elements at byte `offset`.
    pub fn read<T: Copy + Default>(&self, src: &Buf, offset: usize, n: usize) -> Result<Vec<T>> {
        let bytes = n * std::mem::size_of::<T>();
        if offset + bytes > src.bytes {
            bail!(
                "device read of {bytes} bytes at {offset} overruns a {}-byte buffer",
                src.bytes
            );
        }
        let mut v = vec![T::default(); n];
        self.sync()?;
        if bytes > 0 {
            // SAFETY: bounds checked; v has room for n elements.
            check(
                unsafe {
                    cu::cuMemcpyDtoH_v2(v.as_mut_ptr() as *mut c_void, src.at(offset), bytes)
                },
                "device-to-host copy",
            )?;
        }
        Ok(v)
    }

    /// Fills a buffer with a 32-bit pattern (e.g. NaN to poison outputs before a check).
    pub fn fill32(&self, dst: &Buf, pattern: u32) -> Result<()> {
        // SAFETY: dst is a live allocation of dst.bytes bytes.
        check(
            unsafe { cu::cuMemsetD32Async(dst.ptr, pattern, dst.bytes / 4, self.stream) },
            "cuMemsetD32",
        )
    }

    pub fn sync(&self) -> Result<()> {
        // SAFETY: stream is live.
        check(
            unsafe { cu::cuStreamSynchronize(self.stream) },
            "synchronizing the stream",
        )
    }

    /// Compiles (or loads from the disk cache) a module from CUDA C source with `defines`.
    pub fn module(
        &self,
        name: &str,
        source: &str,
        defines: &[(&str, i64)],
    ) -> Result<&'static Module> {
        let mut full = String::new();
        for (k, v) in defines {
            full += &format!("#define {k} {v}\n");
        }
        full += source;
        let arch = format!("sm_{}{}", self.cc.0, self.cc.1);
        let key = fnv1a(full.as_bytes()) ^ fnv1a(arch.as_bytes()).rotate_left(17);
        let mut mods = self
            .modules
            .lock()
            .map_err(|_| anyhow!("module cache lock poisoned"))?;
        if let Some(m) = mods.get(&key) {
            return Ok(m);
        }
        let cubin = cached_cubin(name, &full, &arch, key)?;
        let mut module = std::ptr::null_mut();
        // SAFETY: cubin is a complete image produced by NVRTC for this architecture.
        check(
            unsafe { cu::cuModuleLoadData(&mut module, cubin.as_ptr() as *const c_void) },
            &format!("loading module {name}"),
        )?;
        // Modules live as long as the process: kernels are looked up by handle from graphs.
        let m: &'static Module = Box::leak(Box::new(Module {
            module,
            funcs: Mutex::new(HashMap::new()),
        }));
        mods.insert(key, m);
        Ok(m)
    }

    /// Launches `f` on the stream (captured into a graph when capture is on).
    pub fn launch(
        &self,
        f: &Func,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[&dyn Arg],
    ) -> Result<()> {
        self.launch_on(false, f, grid, block, smem, args)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn launch_on(
        &self,
        side: bool,
        f: &Func,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[&dyn Arg],
    ) -> Result<()> {
        let stream = if side { self.stream2 } else { self.stream };
        let mut ptrs: Vec<*mut c_void> = args.iter().map(|a| a.ptr()).collect();
        // SAFETY: the argument list matches the kernel's parameters (checked by the launchers).
        check(
            unsafe {
                cu::cuLaunchKernel(
                    f.0,
                    grid.0,
                    grid.1,
                    grid.2,
                    block,
                    1,
                    1,
                    smem,
                    stream,
                    ptrs.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "kernel launch",
        )
    }

    /// Whether programmatic dependent launch is allowed: on sm_90+ unless MEDITRON_PDL=0.
    pub fn pdl_supported(&self) -> bool {
        static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        self.cc.0 >= 9
            && *ENV.get_or_init(|| std::env::var("MEDITRON_PDL").map_or(true, |v| v != "0"))
    }

    /// Turns programmatic dependent launch on or off for the following `launch_dep` calls (on
    /// only where `pdl_supported`); returns the previous setting.
    pub fn set_pdl(&self, on: bool) -> bool {
        let on = on && self.pdl_supported();
        self.pdl.swap(on, std::sync::atomic::Ordering::Relaxed)
    }

    /// Launches a kernel written for programmatic dependent launch (it calls pdl_launch and, before
    /// touching what earlier kernels wrote or read, pdl_wait; see common.cuh) on the main stream:
    /// while `set_pdl(true)` holds, it may start before the previous kernel ends, so its prologue
    /// (launch, weight loads) overlaps that kernel's tail. Otherwise as `launch`.
    pub fn launch_dep(
        &self,
        f: &Func,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[&dyn Arg],
    ) -> Result<()> {
        if !self.pdl.load(std::sync::atomic::Ordering::Relaxed) {
            return self.launch_on(false, f, grid, block, smem, args);
        }
        let mut ptrs: Vec<*mut c_void> = args.iter().map(|a| a.ptr()).collect();
        // SAFETY: a zeroed attribute is a valid plain-data value; id and value set below.
        let mut attr: cu::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = cu::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let cfg = cu::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream,
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: as launch_on; the config and its one attribute live across the call.
        check(
            unsafe { cu::cuLaunchKernelEx(&cfg, f.0, ptrs.as_mut_ptr(), std::ptr::null_mut()) },
            "kernel launch (programmatic dependent)",
        )
    }

    fn blas(&self) -> Result<cublas::cublasHandle_t> {
        let mut h = self
            .blas
            .lock()
            .map_err(|_| anyhow!("cuBLAS lock poisoned"))?;
        if let Some(h) = *h {
            return Ok(h);
        }
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cublas::is_culib_present() } {
            bail!("cuBLAS (libcublas.so) was not found: it is needed for prefill; add CUDA's lib64 to LD_LIBRARY_PATH");
        }
        let mut handle = std::ptr::null_mut();
        // SAFETY: out-pointer owned here; stream is live.
        unsafe {
            check_blas(cublas::cublasCreate_v2(&mut handle), "cublasCreate")?;
            check_blas(
                cublas::cublasSetStream_v2(handle, self.stream as _),
                "cublasSetStream",
            )?;
        }
        *h = Some(handle);
        Ok(handle)
    }

    /// C[M][N] (f32, row-major) = A[M][K] (fp16) . W, W fp16 either [K][N] (`w_kn`) or [N][K].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_f16(
        &self,
        a: u64,
        w: u64,
        c: u64,
        m: usize,
        n: usize,
        k: usize,
        w_kn: bool,
    ) -> Result<()> {
        self.gemm_f16_ldc(a, w, c, m, n, k, w_kn, n)
    }

    /// `gemm_f16` into N columns of a row-major C whose rows are `ldc` apart (a column slice of
    /// a wider output).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_f16_ldc(
        &self,
        a: u64,
        w: u64,
        c: u64,
        m: usize,
        n: usize,
        k: usize,
        w_kn: bool,
        ldc: usize,
    ) -> Result<()> {
        let h = self.blas()?;
        let (alpha, beta) = (1f32, 0f32);
        use cublas::cublasOperation_t::*;
        let (opw, ldw) = if w_kn {
            (CUBLAS_OP_N, n)
        } else {
            (CUBLAS_OP_T, k)
        };
        // Row-major C[M][N] is column-major C'(N x M) = W'(N x K) . A'(K x M).
        // SAFETY: pointers are device allocations of the stated shapes (callers check).
        check_blas(
            unsafe {
                cublas::cublasGemmEx(
                    h,
                    opw,
                    CUBLAS_OP_N,
                    n as i32,
                    m as i32,
                    k as i32,
                    &alpha as *const f32 as *const c_void,
                    w as *const c_void,
                    cublas::cudaDataType_t::CUDA_R_16F,
                    ldw as i32,
                    a as *const c_void,
                    cublas::cudaDataType_t::CUDA_R_16F,
                    k as i32,
                    &beta as *const f32 as *const c_void,
                    c as *mut c_void,
                    cublas::cudaDataType_t::CUDA_R_32F,
                    ldc as i32,
                    cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            },
            "GemmEx",
        )
    }

    /// Runs `f` and returns the elapsed device time in milliseconds (events around it).
    pub fn time<F: FnMut() -> Result<()>>(&self, mut f: F) -> Result<f64> {
        let start = Event::new()?;
        let end = Event::new()?;
        start.record(self, false)?;
        f()?;
        end.record(self, false)?;
        end.elapsed_since(&start)
    }

    /// Records the launches made by `f` into a CUDA graph instead of running them.
    pub fn capture<F: FnOnce() -> Result<()>>(&self, f: F) -> Result<Graph> {
        // SAFETY: stream is live and not the legacy default stream.
        check(
            unsafe {
                cu::cuStreamBeginCapture_v2(
                    self.stream,
                    cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                )
            },
            "beginning graph capture",
        )?;
        let r = f();
        let mut graph = std::ptr::null_mut();
        // SAFETY: ends the capture begun above, whatever f returned.
        let e = check(
            unsafe { cu::cuStreamEndCapture(self.stream, &mut graph) },
            "ending graph capture",
        );
        r?;
        e?;
        let mut exec = std::ptr::null_mut();
        // SAFETY: graph was just captured.
        let r = check(
            unsafe { cu::cuGraphInstantiateWithFlags(&mut exec, graph, 0) },
            "instantiating the graph",
        );
        // SAFETY: the executable graph keeps what it needs.
        unsafe { cu::cuGraphDestroy(graph) };
        r?;
        Ok(Graph { exec })
    }

    pub fn replay(&self, g: &Graph) -> Result<()> {
        // SAFETY: exec is an instantiated graph.
        check(
            unsafe { cu::cuGraphLaunch(g.exec, self.stream) },
            "launching the graph",
        )
    }
}

/// Page-locked host memory (fast, asynchronous host-to-device copies), freed on drop.
pub struct Pinned {
    ptr: *mut u8,
    pub bytes: usize,
}

// SAFETY: plain host memory; the owner decides who writes it when.
unsafe impl Send for Pinned {}
unsafe impl Sync for Pinned {}

impl Pinned {
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by cuMemHostAlloc, freed once.
            unsafe { cu::cuMemFreeHost(self.ptr as *mut c_void) };
        }
    }
}

impl Gpu {
    /// `bytes` of page-locked host memory.
    pub fn pinned(&self, bytes: usize) -> Result<Pinned> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer owned here.
        check(
            unsafe { cu::cuMemHostAlloc(&mut p, bytes.max(1), 0) },
            &format!("allocating {bytes} bytes of pinned host memory"),
        )?;
        Ok(Pinned {
            ptr: p as *mut u8,
            bytes,
        })
    }

    /// Asynchronous copy of `bytes` at `src` (inside `pinned`) to device address `dst`, on the
    /// main stream. The caller keeps the pinned memory unchanged until the copy is done.
    pub fn copy_pinned(
        &self,
        dst: u64,
        pinned: &Pinned,
        offset: usize,
        bytes: usize,
    ) -> Result<()> {
        if offset + bytes > pinned.bytes {
            bail!(
                "pinned copy of {bytes} bytes at {offset} overruns {} bytes",
                pinned.bytes
            );
        }
        // SAFETY: in bounds of a live pinned allocation; dst is a device address of the caller's.
        check(
            unsafe {
                cu::cuMemcpyHtoDAsync_v2(
                    dst,
                    pinned.ptr.add(offset) as *const c_void,
                    bytes,
                    self.stream,
                )
            },
            "host-to-device copy",
        )
    }

    /// Device-to-device copy on the main stream.
    pub fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: device addresses of live allocations of at least `bytes` (callers check).
        check(
            unsafe { cu::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.stream) },
            "device-to-device copy",
        )
    }
}

pub struct Graph {
    exec: cu::CUgraphExec,
}
impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: destroyed once.
        unsafe { cu::cuGraphExecDestroy(self.exec) };
    }
}

pub struct Event(cu::CUevent);
impl Event {
    pub fn new() -> Result<Event> {
        let mut e = std::ptr::null_mut();
        // SAFETY: out-pointer owned here.
        check(unsafe { cu::cuEventCreate(&mut e, 0) }, "cuEventCreate")?;
        Ok(Event(e))
    }
    /// Records on the GPU's main stream, or its second one when `side`.
    pub fn record(&self, gpu: &Gpu, side: bool) -> Result<()> {
        let stream = if side { gpu.stream2 } else { gpu.stream };
        // SAFETY: live event and stream.
        check(
            unsafe { cu::cuEventRecord(self.0, stream) },
            "cuEventRecord",
        )
    }
    /// Makes `stream` wait until this event's recorded work is done.
    pub fn wait_on(&self, gpu: &Gpu, side: bool) -> Result<()> {
        let stream = if side { gpu.stream2 } else { gpu.stream };
        // SAFETY: live event and stream.
        check(
            unsafe { cu::cuStreamWaitEvent(stream, self.0, 0) },
            "cuStreamWaitEvent",
        )
    }
    /// Blocks the calling thread until the recorded work is done.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: live event.
        check(
            unsafe { cu::cuEventSynchronize(self.0) },
            "cuEventSynchronize",
        )
    }
    pub fn elapsed_since(&self, start: &Event) -> Result<f64> {
        let mut ms = 0f32;
        // SAFETY: both events were recorded on the same stream.
        unsafe {
            check(cu::cuEventSynchronize(self.0), "cuEventSynchronize")?;
            check(
                cu::cuEventElapsedTime_v2(&mut ms, start.0, self.0),
                "cuEventElapsedTime",
            )?;
        }
        Ok(ms as f64)
    }
}
impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: destroyed once.
        unsafe { cu::cuEventDestroy_v2(self.0) };
    }
}

pub(crate) fn fnv1a(b: &[u8]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for &x in b {
        h = (h ^ x as u64).wrapping_mul(0x100000001b3);
    }
    h
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MEDITRON_CUDA_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("MEDITRON_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/meditron")))
        .unwrap_or_else(|| PathBuf::from(".meditron-cache"));
    home.join("cuda-kernels")
}

/// The cubin for `source` on `arch`: from the disk cache, else compiled by NVRTC and stored.
fn cached_cubin(name: &str, source: &str, arch: &str, key: u64) -> Result<Vec<u8>> {
    let path = cache_dir().join(format!("{name}-{arch}-{key:016x}.cubin"));
    if let Ok(b) = std::fs::read(&path) {
        if !b.is_empty() {
            return Ok(b);
        }
    }
    let cubin = compile(name, source, arch)?;
    // A cache that cannot be written only costs a recompile next time.
    if std::fs::create_dir_all(path.parent().unwrap_or(&path)).is_ok() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &cubin).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(cubin)
}

/// Compiles CUDA C to a cubin for `arch` (e.g. "sm_90") with NVRTC, no include paths.
pub fn compile(name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { nvrtc::is_culib_present() } {
        bail!("NVRTC (libnvrtc.so) was not found: it compiles the CUDA kernels at first use; add CUDA's lib64 (or the nvidia-cuda-nvrtc wheel's lib) to LD_LIBRARY_PATH");
    }
    let src = CString::new(source).context("kernel source holds a NUL byte")?;
    let cname = CString::new(format!("{name}.cu"))?;
    let opts: Vec<CString> = [
        format!("--gpu-architecture={arch}"),
        "-std=c++17".into(),
        "--use_fast_math".into(),
        "-default-device".into(),
    ]
    .into_iter()
    .map(|s| CString::new(s).map_err(Into::into))
    .collect::<Result<_>>()?;
    let optp: Vec<*const std::ffi::c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: nvrtc::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NVRTC calls with live C strings; the program is destroyed on every path.
    unsafe {
        let r = nvrtc::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            cname.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        );
        if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            bail!("NVRTC could not create program {name}: {r:?}");
        }
        let r = nvrtc::nvrtcCompileProgram(prog, optp.len() as i32, optp.as_ptr());
        let mut log_len = 0usize;
        nvrtc::nvrtcGetProgramLogSize(prog, &mut log_len);
        let mut log = vec![0u8; log_len.max(1)];
        nvrtc::nvrtcGetProgramLog(prog, log.as_mut_ptr() as *mut std::ffi::c_char);
        let log = String::from_utf8_lossy(&log[..log_len.saturating_sub(1)]).into_owned();
        if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            nvrtc::nvrtcDestroyProgram(&mut prog);
            bail!("NVRTC failed to compile {name} for {arch} ({r:?}):\n{log}");
        }
        let mut n = 0usize;
        nvrtc::nvrtcGetCUBINSize(prog, &mut n);
        let mut out = vec![0u8; n];
        let r = nvrtc::nvrtcGetCUBIN(prog, out.as_mut_ptr() as *mut std::ffi::c_char);
        nvrtc::nvrtcDestroyProgram(&mut prog);
        if r != nvrtc::nvrtcResult::NVRTC_SUCCESS || n == 0 {
            bail!("NVRTC produced no cubin for {name} ({r:?})");
        }
        Ok(out)
    }
}
