// HydraScan kernels: the plain C/C++ interface shared by the C ABI, the CPU kernel, the CUDA
// kernel and the TensorRT plugin. Nothing here needs TensorRT or the CUDA headers.
//
// The op (docs: plugins/hydra_scan/README.md, DESIGN §2, REFERENCE §7):
//   HydraScan(x[B,L,H,P], dt_f[B,L,H], dt_b[B,L,H], A[H], dt_bias[H],
//             B_f[B,L,G,N], C_f[B,L,G,N], B_b[B,L,G,N], C_b[B,L,G,N],
//             state_f0?[B,H,P,N], state_b0?[B,H,P,N])
//     -> y[B,L,H,P], state_f[B,H,P,N] (fp32), state_b[B,H,P,N] (fp32)
// All tensors are dense row-major ("contiguous").
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Sizes of one HydraScan call. G divides H; head h reads B/C group h / (H / G).
typedef struct HmScanShape
{
    int64_t batch;   // B
    int64_t length;  // L (time)
    int64_t heads;   // H
    int64_t headdim; // P
    int64_t groups;  // G
    int64_t dstate;  // N
} HmScanShape;

// Element types. x, B_*, C_* and y share the "activation" type; dt_f, dt_b, A and dt_bias share the
// "dt" type, which is either fp32 or the activation type. Initial and final states are always fp32.
typedef enum HmDType
{
    HM_FLOAT32 = 0,
    HM_FLOAT16 = 1,
    HM_BFLOAT16 = 2
} HmDType;

// Return codes of every C entry point.
enum
{
    HM_OK = 0,
    HM_ERR_INVALID_ARGUMENT = 1, // bad shape, dtype or pointer: the caller's mistake
    HM_ERR_UNSUPPORTED = 2,      // valid op, but this build/kernel cannot run it (e.g. no CUDA)
    HM_ERR_RUNTIME = 3           // the kernel failed (CUDA error, allocation failure)
};

// Pointers of one call. The optional initial states may be NULL (zero state).
typedef struct HmScanTensors
{
    const void* x;
    const void* dt_f;
    const void* dt_b;
    const void* A;
    const void* dt_bias;
    const void* B_f;
    const void* C_f;
    const void* B_b;
    const void* C_b;
    const float* state_f0;
    const float* state_b0;
    void* y;
    float* state_f;
    float* state_b;
} HmScanTensors;

// Opaque CUDA stream; ABI-identical to cudaStream_t, so this header needs no CUDA include.
struct CUstream_st;
typedef struct CUstream_st* HmCudaStream;

#ifdef __cplusplus
} // extern "C"

#include <functional>
#include <string>

namespace hieramamba
{
namespace hydra_scan
{

const char* dtypeName(HmDType t);

// Empty string when the shape is valid, otherwise a message naming the field, the expected and the
// actual value. B = 0 and L = 0 are valid (nothing to scan; final states = initial states).
std::string validateShape(const HmScanShape& s);

// Empty string when the (activation, dt) type pair is supported.
std::string validateDtypes(int actDtype, int dtDtype);

// Empty string when every pointer needed for this shape is present (NULL is fine for empty tensors
// and for the optional initial states).
std::string validatePointers(const HmScanShape& s, const HmScanTensors& t);

// Shared memory one block of the CUDA kernel may use: the opt-in limit of every sm_80+ GPU
// (sm_86/sm_89 grant 99 KiB per block; sm_80 163 KiB, sm_90 227 KiB). A fixed budget keeps the
// plan, and so the workspace size, a function of the shape and dtype alone.
constexpr size_t kCudaSharedMemoryBudget = 99 * 1024;

// Byte offsets of the buffers a kernel block carves out of its dynamic shared memory.
struct CudaChunkStateSmem // phase 1: x scaled by its decay weight, B, the chunk's state
{
    size_t x, b, state, scan, total;
};
struct CudaChunkOutputSmem // phase 3: x, C (query rows), B, entering state, C.B^T, masked C.B^T, y, scans
{
    size_t x, c, b, state, g, m, y, scan, total;
};

// Tiles per state chunk (1, 2 or 4; default 1), a tuning knob read by planCuda on every call:
// longer chunks pass fewer states through the workspace, at the price of more intra-chunk products.
// Results differ only by rounding. The workspace does not depend on it: it holds the most chunks of
// any setting (cudaWorkspaceSize), so a workspace sized under one setting fits the plan of another.
constexpr const char* kTilesPerChunkEnv = "HIERAMAMBA_CUDA_SCAN_TILES_PER_CHUNK";
constexpr int kCudaMaxTilesPerChunk = 4; // one warp scans each tile of a chunk
constexpr int kCudaTilesPerChunkSettings[] = {1, 2, kCudaMaxTilesPerChunk};

// How the CUDA kernel runs one shape (pure host logic; hydraScanShape.cpp). The scan is the chunked
// SSD algorithm in three launches, each covering both directions (hydraScanKernelDevice.cuh):
// chunk states, state passing across chunks, chunk outputs. A block works on tiles of Q steps;
// states are kept per chunk of T tiles.
struct CudaPlan
{
    int tile = 0;             // Q: time steps per tile (64, 32 or 16: the largest that fits)
    int tilesPerChunk = 1;    // T (kTilesPerChunkEnv)
    int chunk = 0;            // T*Q: time steps per state chunk
    int64_t numChunks = 0;    // ceil(L / chunk)
    bool tensorCores = false; // 16-bit x and P, N multiples of 16: intra-chunk products on tensor cores
    size_t operandBytes = 0;  // element size of the staged matrix operands (2 on tensor cores, else 4)
    CudaChunkStateSmem stateSmem{};
    CudaChunkOutputSmem outputSmem{};
    // Workspace: two parts, each sized for S chunks per direction and batch*head, S the most chunks
    // of any tiles-per-chunk setting (T = 1's for every P, N <= 128), so offsets and size are a
    // function of shape and dtype only. This plan uses the start of each part, packed with its own
    // chunk count: [2 dirs, B, H, numChunks (<= S), P, N] and [2 dirs, B, H, numChunks].
    size_t chunkStatesOffset = 0; // fp32 states
    size_t chunkDecaysOffset = 0; // fp32 decays
    size_t workspaceBytes = 0;    // == cudaWorkspaceSize(shape, dtype)
};

// Fills *plan for kTilesPerChunkEnv's setting, or returns why the CUDA kernel cannot run this shape
// (it must already pass validateShape) or why kTilesPerChunkEnv is invalid. The limit is shared
// memory: P*N staged once plus Q-row tiles of x, B, C.
std::string planCuda(const HmScanShape& s, HmDType act, CudaPlan* plan);

// planCuda with the setting given (one of kCudaTilesPerChunkSettings) instead of read.
std::string planCudaWithTiles(const HmScanShape& s, HmDType act, int tilesPerChunk, CudaPlan* plan);

// Extra limits of the CUDA kernel beyond validateShape: planCuda's verdict.
std::string validateCudaShape(const HmScanShape& s, HmDType act);

// Scratch bytes the CUDA kernel needs: per-chunk fp32 states and decays of both directions, for the
// most chunks of any tiles-per-chunk setting (does not read kTilesPerChunkEnv; equals every
// plan's workspaceBytes). 0 for invalid shapes, shapes no setting can run, and L = 0 or B = 0.
size_t cudaWorkspaceSize(const HmScanShape& s, HmDType act);

// Element counts, for callers that allocate.
int64_t numel(const HmScanShape& s, const char* tensorName);

// Runs body(i) for every i in [0, count), possibly concurrently, and returns when all have run.
// body does not throw. Lets a host with its own thread pool (ONNX Runtime's intra-op pool,
// hydraScanOrtOp.cpp) run the CPU kernel's tasks instead of threads of the kernel's own.
using HmTaskRunner = std::function<void(int64_t count, const std::function<void(int64_t)>& body)>;

// CPU kernel (hydraScanCpu.cpp). Validates everything first; returns "" on success. Work is split
// over batch x heads: on `runner` when given, else on numThreads threads of its own (<= 0:
// std::thread::hardware_concurrency()).
std::string runCpu(const HmScanShape& s, HmDType act, HmDType dt, const HmScanTensors& t, int numThreads,
    const HmTaskRunner* runner = nullptr);

// Whether runCpu takes its AVX-512 step (the CPU has it, HIERAMAMBA_SCAN_CPU is not "portable");
// results are bitwise those of the portable loop either way.
bool cpuUsesAvx512();

// CUDA kernel (hydraScanKernel.cu): the chunked SSD scan of planCuda, three launches on `stream`,
// each covering both directions with the one-step shift (no flips, no batch doubling). All
// pointers are device pointers; workspace must hold cudaWorkspaceSize() bytes (may be NULL when
// that is 0). Asynchronous on `stream`; returns "" when the launches succeeded.
std::string launchCuda(const HmScanShape& s, HmDType act, HmDType dt, const HmScanTensors& t, void* workspace,
    size_t workspaceBytes, HmCudaStream stream);

// True when this library was built with the CUDA kernel.
bool cudaCompiled();

} // namespace hydra_scan
} // namespace hieramamba
#endif // __cplusplus
