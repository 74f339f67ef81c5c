// Helpers shared by this library's ONNX Runtime custom-op kernels (hydraScanOrtOp.cpp,
// bf16ConvOrtOp.cpp): calls into the OrtApi table by slot (hmOrtAbi.h), statuses, tensor
// descriptions and the session's intra-op pool.
#pragma once

#include "hmOrtAbi.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace hieramamba::ort
{

template <typename Fn>
Fn apiFn(const OrtApi* api, int slot)
{
    return reinterpret_cast<Fn>(reinterpret_cast<void* const*>(api)[slot]);
}

inline OrtStatus* makeStatus(const OrtApi* api, int code, const std::string& message)
{
    return apiFn<OrtStatus* (*) (int, const char*)>(api, HM_ORT_CreateStatus)(code, message.c_str());
}

// Evaluates an ORT call; returns its status from the enclosing function when it failed.
#define HM_ORT_TRY(call)                                                                                  \
    do                                                                                                    \
    {                                                                                                     \
        if (OrtStatus* status_ = (call))                                                                  \
        {                                                                                                 \
            return status_;                                                                               \
        }                                                                                                 \
    } while (0)

// Element type and dimensions of a tensor value.
inline OrtStatus* describe(const OrtApi* api, const OrtValue* value, int* type, std::vector<int64_t>* dims)
{
    OrtTensorTypeAndShapeInfo* info = nullptr;
    HM_ORT_TRY(apiFn<OrtStatus* (*) (const OrtValue*, OrtTensorTypeAndShapeInfo**)>(api,
        HM_ORT_GetTensorTypeAndShape)(value, &info));
    auto release = apiFn<void (*)(OrtTensorTypeAndShapeInfo*)>(api, HM_ORT_ReleaseTensorTypeAndShapeInfo);
    std::unique_ptr<OrtTensorTypeAndShapeInfo, decltype(release)> guard(info, release);
    size_t rank = 0;
    HM_ORT_TRY(apiFn<OrtStatus* (*) (const OrtTensorTypeAndShapeInfo*, int*)>(api, HM_ORT_GetTensorElementType)(
        info, type));
    HM_ORT_TRY(apiFn<OrtStatus* (*) (const OrtTensorTypeAndShapeInfo*, size_t*)>(api, HM_ORT_GetDimensionsCount)(
        info, &rank));
    dims->assign(rank, 0);
    HM_ORT_TRY(apiFn<OrtStatus* (*) (const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(api,
        HM_ORT_GetDimensions)(info, dims->data(), rank));
    return nullptr;
}

inline OrtStatus* dataOf(const OrtApi* api, const OrtValue* value, void** data)
{
    // GetTensorMutableData takes a non-const value; inputs are only read.
    return apiFn<OrtStatus* (*) (OrtValue*, void**)>(api, HM_ORT_GetTensorMutableData)(
        const_cast<OrtValue*>(value), data);
}

inline void runTask(void* body, size_t i)
{
    (*static_cast<const std::function<void(int64_t)>*>(body))(static_cast<int64_t>(i));
}

// body(i) for i in [0, count) on the session's intra-op pool (its thread count, and no threads of
// our own competing with ORT's for the same cores); throws on failure.
inline void parallelFor(const OrtApi* api, OrtKernelContext* ctx, int64_t count, const std::function<void(int64_t)>& body)
{
    auto fn = apiFn<OrtStatus* (*) (const OrtKernelContext*, void (*)(void*, size_t), size_t, size_t, void*)>(
        api, HM_ORT_KernelContext_ParallelFor);
    OrtStatus* status
        = fn(ctx, runTask, static_cast<size_t>(count), 0, const_cast<void*>(static_cast<const void*>(&body)));
    if (status != nullptr)
    {
        const std::string message = apiFn<const char* (*) (const OrtStatus*)>(api, HM_ORT_GetErrorMessage)(status);
        apiFn<void (*)(OrtStatus*)>(api, HM_ORT_ReleaseStatus)(status);
        throw std::runtime_error("ONNX Runtime's KernelContext_ParallelFor failed: " + message);
    }
}

// The parts of an OrtCustomOp that are the same for every kernel of this library: custom-op version
// 16 (status-returning V2 entry points), the CPU execution provider, inputs in default (CPU) memory,
// required outputs, no variadic arguments. The caller sets name, types, counts, input
// characteristics and the kernel functions.
inline void initCpuCustomOp(OrtCustomOp& op)
{
    op = OrtCustomOp{};
    op.version = HM_ORT_CUSTOM_OP_VERSION;
    op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };
    op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) -> int { return HM_ORT_REQUIRED; };
    op.GetInputMemoryType = [](const OrtCustomOp*, size_t) -> int { return 0; }; // OrtMemTypeDefault
    op.GetVariadicInputMinArity = op.GetVariadicOutputMinArity = [](const OrtCustomOp*) -> int { return 1; };
    op.GetVariadicInputHomogeneity = op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) -> int { return 1; };
}

} // namespace hieramamba::ort
