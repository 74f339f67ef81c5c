// ONNX Runtime custom-op kernel for the hieramamba::HydraScan node (DESIGN §3) on the CPU execution
// provider: the C++ CPU kernel (hydraScanCpu.cpp) instead of ONNX Runtime running the node's portable
// function body op by op. Without this kernel registered, ONNX Runtime inlines the function body
// (same results, slower).
//
// Entry point: RegisterCustomOps, the symbol ONNX Runtime looks up in a library passed to
// SessionOptions.register_custom_ops_library (Python) / RegisterCustomOpsLibrary (C); it also adds the
// CPU kernels of `bfloat16` bundles (../cpu_kernels) to the same "hieramamba" domain. The ABI subset
// used is declared in ../capi/hmOrtAbi.h. Shape and dtype decisions come from hydraScanPluginLogic
// (shared with the TensorRT plugin), so every adapter accepts and rejects the same calls.
#include "../capi/hmCApi.h"
#include "../capi/hmOrtAbi.h"
#include "../capi/hmOrtKernel.h"
#include "../cpu_kernels/cpuKernelsOrtOp.h"
#include "hydraScanKernel.h"
#include "hydraScanPluginLogic.h"

#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace
{

using namespace hieramamba::hydra_scan;
using namespace hieramamba::ort;
namespace pl = hieramamba::hydra_scan::plugin;

// The (activation, dt) element-type pairs the kernel runs; one OrtCustomOp each, because ONNX Runtime
// picks a custom kernel by the exact input types and derives the output types from that choice.
struct TypePair
{
    int act;
    int dt;
};
constexpr TypePair kTypePairs[] = {{HM_ORT_FLOAT, HM_ORT_FLOAT}, {HM_ORT_FLOAT16, HM_ORT_FLOAT},
    {HM_ORT_FLOAT16, HM_ORT_FLOAT16}, {HM_ORT_BFLOAT16, HM_ORT_FLOAT}, {HM_ORT_BFLOAT16, HM_ORT_BFLOAT16}};

int kernelDtype(int ortType)
{
    switch (ortType)
    {
    case HM_ORT_FLOAT: return HM_FLOAT32;
    case HM_ORT_FLOAT16: return HM_FLOAT16;
    case HM_ORT_BFLOAT16: return HM_BFLOAT16;
    default: return -1;
    }
}

// OrtCustomOp first, so that the `const OrtCustomOp*` ONNX Runtime hands back is our op.
struct HydraScanOp
{
    OrtCustomOp base;
    TypePair types;
};

struct Kernel
{
    const OrtApi* api;
};

const HydraScanOp& self(const OrtCustomOp* op)
{
    return *reinterpret_cast<const HydraScanOp*>(op);
}

const char* opName(const OrtCustomOp*)
{
    return pl::kPluginName;
}

size_t opInputCount(const OrtCustomOp*)
{
    return pl::kNbInputsWithStates;
}

size_t opOutputCount(const OrtCustomOp*)
{
    return pl::kNbOutputs;
}

int opInputType(const OrtCustomOp* op, size_t index)
{
    const TypePair t = self(op).types;
    switch (index)
    {
    case pl::kInDtF:
    case pl::kInDtB:
    case pl::kInA:
    case pl::kInDtBias: return t.dt;
    case pl::kInStateF0:
    case pl::kInStateB0: return HM_ORT_FLOAT;
    default: return t.act; // x, B_f, C_f, B_b, C_b
    }
}

int opOutputType(const OrtCustomOp* op, size_t index)
{
    return index == pl::kOutY ? self(op).types.act : HM_ORT_FLOAT;
}

int opInputCharacteristic(const OrtCustomOp*, size_t index)
{
    return index >= static_cast<size_t>(pl::kNbInputsWithoutStates) ? HM_ORT_OPTIONAL : HM_ORT_REQUIRED;
}

OrtStatus* createKernel(const OrtCustomOp* /*op*/, const OrtApi* api, const OrtKernelInfo*, void** kernel)
{
    try
    {
        *kernel = new Kernel{api};
        return nullptr;
    }
    catch (const std::exception& e)
    {
        return makeStatus(api, HM_ORT_FAIL, std::string("HydraScan: cannot create the kernel: ") + e.what());
    }
}

void destroyKernel(void* kernel)
{
    delete static_cast<Kernel*>(kernel);
}

OrtStatus* computeChecked(const Kernel& k, OrtKernelContext* ctx)
{
    const OrtApi* api = k.api;
    size_t nbIn = 0;
    HM_ORT_TRY(apiFn<OrtStatus* (*) (const OrtKernelContext*, size_t*)>(api, HM_ORT_KernelContext_GetInputCount)(
        ctx, &nbIn));
    std::vector<const OrtValue*> inputs(nbIn, nullptr);
    for (size_t i = 0; i < nbIn; ++i)
    {
        HM_ORT_TRY(apiFn<OrtStatus* (*) (const OrtKernelContext*, size_t, const OrtValue**)>(api,
            HM_ORT_KernelContext_GetInput)(ctx, i, &inputs[i]));
    }
    // Absent optional inputs come as NULL; the states are given together or not at all.
    while (!inputs.empty() && inputs.back() == nullptr)
    {
        inputs.pop_back();
    }
    const int32_t nbInputs = static_cast<int32_t>(inputs.size());
    std::string err = pl::checkIoCount(nbInputs, pl::kNbOutputs);
    if (!err.empty())
    {
        return makeStatus(api, HM_ORT_INVALID_ARGUMENT, err);
    }
    std::vector<int> types(inputs.size(), HM_ORT_UNDEFINED);
    std::vector<pl::Dims> dims(inputs.size());
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (inputs[i] == nullptr)
        {
            return makeStatus(api, HM_ORT_INVALID_ARGUMENT,
                std::string("HydraScan: input ") + pl::inputName(i) + " is missing");
        }
        HM_ORT_TRY(describe(api, inputs[i], &types[i], &dims[i]));
    }
    HmScanShape shape{};
    err = pl::validateInputDims(dims, &shape);
    if (!err.empty())
    {
        return makeStatus(api, HM_ORT_INVALID_ARGUMENT, err);
    }
    const int act = kernelDtype(types[pl::kInX]);
    const int dt = kernelDtype(types[pl::kInDtF]);
    err = validateDtypes(act, dt);
    if (!err.empty())
    {
        return makeStatus(api, HM_ORT_INVALID_ARGUMENT, err);
    }

    std::vector<pl::Dims> outDims;
    err = pl::computeOutputDims(dims, &outDims);
    if (!err.empty())
    {
        return makeStatus(api, HM_ORT_INVALID_ARGUMENT, err);
    }
    void* outData[pl::kNbOutputs] = {nullptr, nullptr, nullptr};
    for (int32_t o = 0; o < pl::kNbOutputs; ++o)
    {
        OrtValue* value = nullptr;
        HM_ORT_TRY(apiFn<OrtStatus* (*) (OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>(api,
            HM_ORT_KernelContext_GetOutput)(ctx, static_cast<size_t>(o), outDims[o].data(), outDims[o].size(), &value));
        HM_ORT_TRY(dataOf(api, value, &outData[o]));
    }
    void* in[pl::kNbInputsWithStates] = {};
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        HM_ORT_TRY(dataOf(api, inputs[i], &in[i]));
    }
    const bool states = pl::hasInitialStates(nbInputs);
    const HmScanTensors t{in[pl::kInX], in[pl::kInDtF], in[pl::kInDtB], in[pl::kInA], in[pl::kInDtBias],
        in[pl::kInBF], in[pl::kInCF], in[pl::kInBB], in[pl::kInCB],
        states ? static_cast<const float*>(in[pl::kInStateF0]) : nullptr,
        states ? static_cast<const float*>(in[pl::kInStateB0]) : nullptr, outData[pl::kOutY],
        static_cast<float*>(outData[pl::kOutStateF]), static_cast<float*>(outData[pl::kOutStateB])};
    // The heads run on the session's intra-op pool: the session's thread count, and no threads of
    // our own competing with ORT's (spinning) ones for the same cores.
    const HmTaskRunner onOrtPool = [api, ctx](int64_t count, const std::function<void(int64_t)>& body) {
        parallelFor(api, ctx, count, body);
    };
    err = runCpu(shape, static_cast<HmDType>(act), static_cast<HmDType>(dt), t, 0, &onOrtPool);
    if (!err.empty())
    {
        return makeStatus(api, HM_ORT_FAIL, err);
    }
    return nullptr;
}

OrtStatus* compute(void* kernel, OrtKernelContext* ctx)
{
    const Kernel& k = *static_cast<const Kernel*>(kernel);
    try
    {
        return computeChecked(k, ctx);
    }
    catch (const std::exception& e)
    {
        return makeStatus(k.api, HM_ORT_FAIL, std::string("HydraScan: ") + e.what());
    }
}

// One custom-op domain shared by every session and kept for the life of the process (ONNX Runtime
// needs the ops alive while any session uses them).
struct Registration
{
    std::vector<std::unique_ptr<HydraScanOp>> ops;
    OrtCustomOpDomain* domain = nullptr;
};

std::mutex gRegistrationLock;
Registration gRegistration;

std::unique_ptr<HydraScanOp> makeOp(TypePair types)
{
    auto op = std::make_unique<HydraScanOp>();
    OrtCustomOp& b = op->base;
    initCpuCustomOp(b); // CreateKernel/KernelCompute stay null: the V2 entry points below are used
    b.GetName = opName;
    b.GetInputType = opInputType;
    b.GetInputTypeCount = opInputCount;
    b.GetOutputType = opOutputType;
    b.GetOutputTypeCount = opOutputCount;
    b.KernelDestroy = destroyKernel;
    b.GetInputCharacteristic = opInputCharacteristic;
    b.CreateKernelV2 = createKernel;
    b.KernelComputeV2 = compute;
    op->types = types;
    return op;
}

OrtStatus* registerOps(OrtSessionOptions* options, const OrtApi* api)
{
    std::lock_guard<std::mutex> lock(gRegistrationLock);
    Registration& reg = gRegistration;
    if (reg.domain == nullptr)
    {
        OrtCustomOpDomain* domain = nullptr;
        HM_ORT_TRY(apiFn<OrtStatus* (*) (const char*, OrtCustomOpDomain**)>(api, HM_ORT_CreateCustomOpDomain)(
            pl::kPluginNamespace, &domain));
        std::vector<std::unique_ptr<HydraScanOp>> ops;
        for (const TypePair& types : kTypePairs)
        {
            ops.push_back(makeOp(types));
            HM_ORT_TRY(apiFn<OrtStatus* (*) (OrtCustomOpDomain*, const OrtCustomOp*)>(api,
                HM_ORT_CustomOpDomain_Add)(domain, &ops.back()->base));
        }
        // The bfloat16 bundles' kernels share the domain (one RegisterCustomOps per library).
        for (const OrtCustomOp* op : {hieramamba::cpu_kernels::bf16ConvCustomOp(),
                 hieramamba::cpu_kernels::bf16MatMulCustomOp(), hieramamba::cpu_kernels::channelNormCustomOp(),
                 hieramamba::cpu_kernels::depthwiseConvCustomOp(), hieramamba::cpu_kernels::bf16FeedForwardCustomOp()})
        {
            HM_ORT_TRY(apiFn<OrtStatus* (*) (OrtCustomOpDomain*, const OrtCustomOp*)>(api, HM_ORT_CustomOpDomain_Add)(
                domain, op));
        }
        reg.ops = std::move(ops);
        reg.domain = domain;
    }
    return apiFn<OrtStatus* (*) (OrtSessionOptions*, OrtCustomOpDomain*)>(api, HM_ORT_AddCustomOpDomain)(
        options, reg.domain);
}

} // namespace

extern "C" {

HM_API OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base)
{
    const OrtApi* api = base->GetApi(HM_ORT_API_VERSION);
    if (api == nullptr)
    {
        // CreateStatus is the first slot of every API version, so an older runtime can still be told.
        const OrtApi* oldest = base->GetApi(1);
        const std::string message = std::string("libhieramamba_plugins: the HydraScan kernel needs ONNX Runtime "
                                                ">= 1.20 (C API version 20); this is ")
            + base->GetVersionString();
        return oldest != nullptr ? makeStatus(oldest, HM_ORT_FAIL, message) : nullptr;
    }
    try
    {
        return registerOps(options, api);
    }
    catch (const std::exception& e)
    {
        return makeStatus(api, HM_ORT_FAIL, std::string("libhieramamba_plugins: RegisterCustomOps: ") + e.what());
    }
}

} // extern "C"
