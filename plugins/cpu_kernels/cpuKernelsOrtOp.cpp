// ONNX Runtime kernels of hieramamba::Bf16Conv, Bf16MatMul, Bf16FeedForward (bf16Gemm.h),
// hieramamba::ChannelNorm (channelNorm.h) and hieramamba::DepthwiseConv (depthwiseConv.h). The
// product weights are repacked on a node's first call and kept with its kernel (initializers do
// not move); calls may come from several threads at once (serving), so the packing is done once
// under a lock.
#include "cpuKernelsOrtOp.h"

#include "../capi/hmOrtKernel.h"
#include "bf16Gemm.h"
#include "channelNorm.h"
#include "depthwiseConv.h"

#include <exception>
#include <mutex>
#include <string>
#include <vector>

namespace hieramamba::cpu_kernels
{
namespace
{

using namespace hieramamba::ort;
using Dims = std::vector<int64_t>;

enum class Kind
{
    Conv,
    MatMul,
    ChannelNorm,
    DepthwiseConv,
    FeedForward
};

const char* kindName(Kind kind)
{
    switch (kind)
    {
    case Kind::Conv: return "Bf16Conv";
    case Kind::MatMul: return "Bf16MatMul";
    case Kind::ChannelNorm: return "ChannelNorm";
    case Kind::FeedForward: return "Bf16FeedForward";
    default: return "DepthwiseConv";
    }
}

// OrtCustomOp first, so that the `const OrtCustomOp*` ONNX Runtime hands back is our op.
struct Op
{
    OrtCustomOp base;
    Kind kind;
};

struct Kernel
{
    const OrtApi* api;
    Kind kind;
    std::mutex lock;
    const void* packedFrom = nullptr; // the weight buffer the packed operand was made from
    const void* packedFrom2 = nullptr; // Bf16FeedForward: the second product's
    PackedConv conv;
    PackedConv conv2; // Bf16FeedForward: the second product
    PackedMatrix matrix;
};

Kind kindOf(const OrtCustomOp* op)
{
    return reinterpret_cast<const Op*>(op)->kind;
}

const char* opName(const OrtCustomOp* op)
{
    return kindName(kindOf(op));
}

size_t opInputCount(const OrtCustomOp* op)
{
    switch (kindOf(op))
    {
    case Kind::Conv: return 3;     // x, w, bias
    case Kind::MatMul: return 2;   // x, w
    case Kind::ChannelNorm: return 4; // x, eps, weight, bias
    case Kind::FeedForward: return 5; // x, w1, bias1, w2, bias2
    default: return 3;             // x, w, bias
    }
}

size_t opOutputCount(const OrtCustomOp*)
{
    return 1;
}

int opInputType(const OrtCustomOp* op, size_t index)
{
    const Kind kind = kindOf(op);
    const bool productWeight = (index == 1 && (kind == Kind::Conv || kind == Kind::MatMul || kind == Kind::FeedForward))
        || (index == 3 && kind == Kind::FeedForward);
    return productWeight ? HM_ORT_BFLOAT16 : HM_ORT_FLOAT;
}

int opOutputType(const OrtCustomOp*, size_t)
{
    return HM_ORT_FLOAT;
}

int opInputCharacteristic(const OrtCustomOp*, size_t)
{
    return HM_ORT_REQUIRED;
}

OrtStatus* createKernel(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo*, void** kernel)
{
    try
    {
        auto* k = new Kernel{};
        k->api = api;
        k->kind = kindOf(op);
        *kernel = k;
        return nullptr;
    }
    catch (const std::exception& e)
    {
        return makeStatus(api, HM_ORT_FAIL, std::string(kindName(kindOf(op))) + ": cannot create the kernel: " + e.what());
    }
}

void destroyKernel(void* kernel)
{
    delete static_cast<Kernel*>(kernel);
}

std::string dimsText(const Dims& d)
{
    std::string s = "(";
    for (size_t i = 0; i < d.size(); ++i)
    {
        s += (i ? ", " : "") + std::to_string(d[i]);
    }
    return s + ")";
}

// Per-channel (C) or (C, 1) values.
bool perChannel(const Dims& d, int64_t c)
{
    return (d.size() == 1 && d[0] == c) || (d.size() == 2 && d[0] == c && d[1] == 1);
}

OrtStatus* computeChecked(Kernel& k, OrtKernelContext* ctx)
{
    const OrtApi* api = k.api;
    const bool conv = k.kind == Kind::Conv, norm = k.kind == Kind::ChannelNorm;
    const bool depthwise = k.kind == Kind::DepthwiseConv, feedForward = k.kind == Kind::FeedForward;
    const char* name = kindName(k.kind);
    const int nbIn = feedForward ? 5 : conv || depthwise ? 3 : norm ? 4 : 2;
    Dims dims[5];
    void* data[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
    for (int i = 0; i < nbIn; ++i)
    {
        const OrtValue* value = nullptr;
        HM_ORT_TRY(apiFn<OrtStatus* (*) (const OrtKernelContext*, size_t, const OrtValue**)>(api,
            HM_ORT_KernelContext_GetInput)(ctx, static_cast<size_t>(i), &value));
        if (value == nullptr)
        {
            return makeStatus(api, HM_ORT_INVALID_ARGUMENT, std::string(name) + ": input " + std::to_string(i) + " is missing");
        }
        int type = 0;
        HM_ORT_TRY(describe(api, value, &type, &dims[i]));
        HM_ORT_TRY(dataOf(api, value, &data[i]));
    }
    const Dims &x = dims[0], &w = dims[1];
    Dims outDims;
    if (norm)
    {
        if (x.size() != 3 || w.size() > 1 || (w.size() == 1 && w[0] != 1) || !perChannel(dims[2], x[1])
            || !perChannel(dims[3], x[1]))
        {
            return makeStatus(api, HM_ORT_INVALID_ARGUMENT,
                "ChannelNorm: expected x (B, C, T), eps (a scalar), weight and bias (C) or (C, 1); got x "
                    + dimsText(x) + ", eps " + dimsText(w) + ", weight " + dimsText(dims[2]) + ", bias "
                    + dimsText(dims[3]));
        }
        outDims = x;
    }
    else if (depthwise)
    {
        if (x.size() != 3 || w.size() != 3 || w[0] != x[1] || w[1] != 1 || w[2] % 2 != 1 || dims[2].size() != 1
            || dims[2][0] != x[1])
        {
            return makeStatus(api, HM_ORT_INVALID_ARGUMENT,
                "DepthwiseConv: expected x (B, C, T), w (C, 1, K odd), bias (C); got x " + dimsText(x) + ", w "
                    + dimsText(w) + ", bias " + dimsText(dims[2]));
        }
        outDims = x;
    }
    else if (feedForward)
    {
        const Dims &b1 = dims[2], &w2 = dims[3], &b2 = dims[4];
        if (x.size() != 3 || w.size() != 3 || w[1] != x[1] || w[2] != 1 || b1.size() != 1 || b1[0] != w[0]
            || w2.size() != 3 || w2[1] != w[0] || w2[2] != 1 || b2.size() != 1 || b2[0] != w2[0])
        {
            return makeStatus(api, HM_ORT_INVALID_ARGUMENT,
                "Bf16FeedForward: expected x (B, C, T), w1 (H, C, 1), bias1 (H), w2 (C', H, 1), bias2 (C'); got x "
                    + dimsText(x) + ", w1 " + dimsText(w) + ", bias1 " + dimsText(b1) + ", w2 " + dimsText(w2)
                    + ", bias2 " + dimsText(b2));
        }
        outDims = {x[0], w2[0], x[2]};
    }
    else if (conv)
    {
        const Dims& b = dims[2];
        if (x.size() != 3 || w.size() != 3 || b.size() != 1 || x[1] != w[1] || b[0] != w[0] || w[2] % 2 != 1)
        {
            return makeStatus(api, HM_ORT_INVALID_ARGUMENT,
                "Bf16Conv: expected x (B, Cin, T), w (Cout, Cin, K odd), bias (Cout); got x " + dimsText(x) + ", w "
                    + dimsText(w) + ", bias " + dimsText(b));
        }
        outDims = {x[0], w[0], x[2]};
    }
    else
    {
        if (x.size() < 2 || w.size() != 2 || x.back() != w[0])
        {
            return makeStatus(api, HM_ORT_INVALID_ARGUMENT,
                "Bf16MatMul: expected x (..., M, K) and w (K, N); got x " + dimsText(x) + ", w " + dimsText(w));
        }
        outDims = x;
        outDims.back() = w[1];
    }
    if (feedForward)
    {
        std::lock_guard<std::mutex> guard(k.lock);
        if (k.packedFrom != data[1] || k.packedFrom2 != data[3])
        {
            k.conv = packConv(static_cast<const uint16_t*>(data[1]), static_cast<const float*>(data[2]), w[0], w[1], 1);
            k.conv2 = packConv(static_cast<const uint16_t*>(data[3]), static_cast<const float*>(data[4]), dims[3][0],
                dims[3][1], 1);
            k.packedFrom = data[1];
            k.packedFrom2 = data[3];
        }
    }
    else if (conv || k.kind == Kind::MatMul)
    {
        std::lock_guard<std::mutex> guard(k.lock);
        if (k.packedFrom != data[1])
        {
            if (conv)
            {
                k.conv = packConv(static_cast<const uint16_t*>(data[1]), static_cast<const float*>(data[2]), w[0], w[1], w[2]);
            }
            else
            {
                k.matrix = packMatrix(static_cast<const uint16_t*>(data[1]), w[0], w[1]);
            }
            k.packedFrom = data[1];
        }
    }
    OrtValue* out = nullptr;
    HM_ORT_TRY(apiFn<OrtStatus* (*) (OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>(api,
        HM_ORT_KernelContext_GetOutput)(ctx, 0, outDims.data(), outDims.size(), &out));
    void* y = nullptr;
    HM_ORT_TRY(dataOf(api, out, &y));
    const TaskRunner onOrtPool = [api, ctx](int64_t count, const std::function<void(int64_t)>& body) {
        parallelFor(api, ctx, count, body);
    };
    const float* xf = static_cast<const float*>(data[0]);
    std::string err;
    if (norm)
    {
        channelNorm(xf, static_cast<const float*>(data[2]), static_cast<const float*>(data[3]),
            *static_cast<const float*>(data[1]), static_cast<float*>(y), x[0], x[1], x[2], onOrtPool);
    }
    else if (depthwise)
    {
        depthwiseConv(xf, static_cast<const float*>(data[1]), static_cast<const float*>(data[2]), static_cast<float*>(y),
            x[0], x[1], x[2], w[2], onOrtPool);
    }
    else if (conv)
    {
        err = runConv(k.conv, xf, static_cast<float*>(y), x[0], x[2], onOrtPool);
    }
    else if (feedForward)
    {
        err = runFeedForward(k.conv, k.conv2, xf, static_cast<float*>(y), x[0], x[2], onOrtPool);
    }
    else
    {
        int64_t rows = 1;
        for (size_t i = 0; i + 1 < x.size(); ++i)
        {
            rows *= x[i];
        }
        err = runMatMul(k.matrix, xf, static_cast<float*>(y), rows, onOrtPool);
    }
    return err.empty() ? nullptr : makeStatus(api, HM_ORT_FAIL, err);
}

OrtStatus* compute(void* kernel, OrtKernelContext* ctx)
{
    Kernel& k = *static_cast<Kernel*>(kernel);
    try
    {
        return computeChecked(k, ctx);
    }
    catch (const std::exception& e)
    {
        return makeStatus(k.api, HM_ORT_FAIL, std::string(kindName(k.kind)) + ": " + e.what());
    }
}

Op makeOp(Kind kind)
{
    Op op{};
    OrtCustomOp& b = op.base;
    initCpuCustomOp(b);
    b.GetName = opName;
    b.GetInputType = opInputType;
    b.GetInputTypeCount = opInputCount;
    b.GetOutputType = opOutputType;
    b.GetOutputTypeCount = opOutputCount;
    b.KernelDestroy = destroyKernel;
    b.GetInputCharacteristic = opInputCharacteristic;
    b.CreateKernelV2 = createKernel;
    b.KernelComputeV2 = compute;
    op.kind = kind;
    return op;
}

} // namespace

const OrtCustomOp* bf16ConvCustomOp()
{
    static const Op op = makeOp(Kind::Conv);
    return &op.base;
}

const OrtCustomOp* bf16MatMulCustomOp()
{
    static const Op op = makeOp(Kind::MatMul);
    return &op.base;
}

const OrtCustomOp* channelNormCustomOp()
{
    static const Op op = makeOp(Kind::ChannelNorm);
    return &op.base;
}

const OrtCustomOp* depthwiseConvCustomOp()
{
    static const Op op = makeOp(Kind::DepthwiseConv);
    return &op.base;
}

const OrtCustomOp* bf16FeedForwardCustomOp()
{
    static const Op op = makeOp(Kind::FeedForward);
    return &op.base;
}

} // namespace hieramamba::cpu_kernels
