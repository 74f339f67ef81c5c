// TensorRT adapter of HydraScan; decisions are in hydraScanPluginLogic.cpp, math in hydraScanKernel.cu.
#include "hydraScanPlugin.h"

#include <cstdio>
#include <exception>
#include <mutex>

namespace hieramamba
{
namespace trt
{
namespace
{

namespace logic = hydra_scan::plugin;
using nvinfer1::DataType;

static_assert(static_cast<int32_t>(nvinfer1::PluginFieldType::kINT32) == static_cast<int32_t>(logic::FieldType::kINT32)
        && static_cast<int32_t>(nvinfer1::PluginFieldType::kINT64) == static_cast<int32_t>(logic::FieldType::kINT64)
        && static_cast<int32_t>(nvinfer1::PluginFieldType::kFLOAT32)
            == static_cast<int32_t>(logic::FieldType::kFLOAT32)
        && static_cast<int32_t>(nvinfer1::PluginFieldType::kCHAR) == static_cast<int32_t>(logic::FieldType::kCHAR),
    "logic::FieldType must mirror nvinfer1::PluginFieldType");

// TensorRT hands a logger finder to libraries it loads (setLoggerFinder below); without one,
// errors still reach stderr instead of vanishing.
class LoggerFinderHolder
{
public:
    void set(nvinfer1::ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        if (mFinder == nullptr)
        {
            mFinder = finder;
        }
    }
    void error(const std::string& message)
    {
        nvinfer1::ILogger* logger = nullptr;
        {
            std::lock_guard<std::mutex> lock(mMutex);
            logger = mFinder != nullptr ? mFinder->findLogger() : nullptr;
        }
        if (logger != nullptr)
        {
            logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
        }
        else
        {
            std::fprintf(stderr, "[hieramamba HydraScan plugin] %s\n", message.c_str());
        }
    }

private:
    std::mutex mMutex;
    nvinfer1::ILoggerFinder* mFinder{nullptr};
};

LoggerFinderHolder& loggerFinder()
{
    static LoggerFinderHolder holder;
    return holder;
}

void logError(const std::string& message)
{
    loggerFinder().error(message);
}

logic::IoType toIoType(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return logic::IoType::kFLOAT32;
    case DataType::kHALF: return logic::IoType::kFLOAT16;
    case DataType::kBF16: return logic::IoType::kBFLOAT16;
    default: return logic::IoType::kOTHER;
    }
}

DataType toDataType(logic::IoType t)
{
    switch (t)
    {
    case logic::IoType::kFLOAT16: return DataType::kHALF;
    case logic::IoType::kBFLOAT16: return DataType::kBF16;
    default: return DataType::kFLOAT;
    }
}

logic::Dims toDims(const nvinfer1::Dims& d)
{
    logic::Dims out;
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        out.push_back(d.d[i] < 0 ? -1 : static_cast<int64_t>(d.d[i]));
    }
    return out;
}

std::vector<logic::Dims> toDimsList(const nvinfer1::DynamicPluginTensorDesc* descs, int32_t n)
{
    std::vector<logic::Dims> out;
    for (int32_t i = 0; i < n; ++i)
    {
        out.push_back(toDims(descs[i].desc.dims));
    }
    return out;
}

std::vector<logic::Dims> toDimsList(const nvinfer1::PluginTensorDesc* descs, int32_t n)
{
    std::vector<logic::Dims> out;
    for (int32_t i = 0; i < n; ++i)
    {
        out.push_back(toDims(descs[i].dims));
    }
    return out;
}

} // namespace

// ---- HydraScanPlugin ----------------------------------------------------------------------------

HydraScanPlugin::HydraScanPlugin(const logic::Attributes& attrs)
    : mAttrs(attrs)
    , mSerialized(attrs)
    , mMetadata(logic::describe(attrs))
{
    for (const logic::FieldView& f : mSerialized.fields())
    {
        mSerialFields.emplace_back(f.name, f.data, static_cast<nvinfer1::PluginFieldType>(f.type), f.length);
    }
    mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialCollection.fields = mSerialFields.data();
}

nvinfer1::IPluginCapability* HydraScanPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* HydraScanPlugin::clone() noexcept
{
    try
    {
        return new HydraScanPlugin(mAttrs); // rebuilds the serialization views for the new object
    }
    catch (const std::exception& e)
    {
        logError(std::string("HydraScan clone failed: ") + e.what());
    }
    return nullptr;
}

const char* HydraScanPlugin::getPluginName() const noexcept
{
    return logic::kPluginName;
}

const char* HydraScanPlugin::getPluginVersion() const noexcept
{
    return logic::kPluginVersion;
}

const char* HydraScanPlugin::getPluginNamespace() const noexcept
{
    return logic::kPluginNamespace;
}

int32_t HydraScanPlugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
    const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept
{
    try
    {
        std::string e = logic::checkIoCount(nbInputs, nbOutputs);
        if (e.empty())
        {
            e = logic::validateInputDims(toDimsList(in, nbInputs), nullptr); // -1 wildcards are skipped
        }
        if (e.empty())
        {
            e = logic::checkStatesAgree(mAttrs, nbInputs);
        }
        if (e.empty() && (out == nullptr || toIoType(out[logic::kOutY].desc.type) != toIoType(in[logic::kInX].desc.type)))
        {
            e = "HydraScan: output y must have the type of x";
        }
        // The profile's largest shape must be plannable: its workspace is what TensorRT will grant
        // enqueue (getWorkspaceSize computes the same from the same descriptors).
        size_t workspace = 0;
        if (e.empty())
        {
            e = logic::planProfile(toDims(in[logic::kInX].max), toDims(in[logic::kInBF].max),
                toIoType(in[logic::kInX].desc.type), &workspace);
        }
        if (!e.empty())
        {
            logError(e);
            return 1;
        }
        mAttrs.workspaceSize = logic::recordWorkspace(mAttrs.workspaceSize, workspace);
        recordInputCount(nbInputs); // also serializes workspace_size
        return 0;
    }
    catch (const std::exception& ex)
    {
        logError(std::string("HydraScan configurePlugin: ") + ex.what());
    }
    return 1;
}

int32_t HydraScanPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        std::vector<logic::IoType> in;
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            in.push_back(toIoType(inputTypes[i]));
        }
        logic::IoType out[logic::kNbOutputs];
        const std::string e = logic::outputTypes(in.data(), nbInputs, out, nbOutputs);
        if (!e.empty())
        {
            logError(e);
            return 1;
        }
        for (int32_t o = 0; o < nbOutputs; ++o)
        {
            outputTypes[o] = toDataType(out[o]);
        }
        return 0;
    }
    catch (const std::exception& ex)
    {
        logError(std::string("HydraScan getOutputDataTypes: ") + ex.what());
    }
    return 1;
}

int32_t HydraScanPlugin::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs,
    const nvinfer1::DimsExprs* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        std::string e = logic::checkIoCount(nbInputs, nbOutputs);
        if (e.empty())
        {
            // Constant dimensions are checked now; symbolic ones (-1 here) at configure/shape-change time.
            std::vector<logic::Dims> dims;
            for (int32_t i = 0; i < nbInputs; ++i)
            {
                logic::Dims d;
                for (int32_t k = 0; k < inputs[i].nbDims; ++k)
                {
                    d.push_back(inputs[i].d[k]->isConstant() ? inputs[i].d[k]->getConstantValue() : -1);
                }
                dims.push_back(d);
            }
            e = logic::validateInputDims(dims, nullptr);
        }
        if (!e.empty())
        {
            logError(e);
            return 1;
        }
        for (int32_t o = 0; o < nbOutputs; ++o)
        {
            const auto& sources = logic::outputDimSources(o);
            outputs[o].nbDims = static_cast<int32_t>(sources.size());
            for (size_t k = 0; k < sources.size(); ++k)
            {
                outputs[o].d[k] = inputs[sources[k].input].d[sources[k].axis];
            }
        }
        return 0;
    }
    catch (const std::exception& ex)
    {
        logError(std::string("HydraScan getOutputShapes: ") + ex.what());
    }
    return 1;
}

bool HydraScanPlugin::supportsFormatCombination(
    int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        if (pos < 0 || pos >= nbInputs + nbOutputs)
        {
            return false;
        }
        // Only inOut[0..pos] are meaningful at this point (TensorRT's contract).
        std::vector<logic::IoDesc> descs;
        for (int32_t i = 0; i <= pos; ++i)
        {
            descs.push_back(
                {toIoType(inOut[i].desc.type), inOut[i].desc.format == nvinfer1::TensorFormat::kLINEAR});
        }
        descs.resize(static_cast<size_t>(nbInputs + nbOutputs), logic::IoDesc{logic::IoType::kOTHER, false});
        return logic::supportsCombination(pos, descs.data(), nbInputs, nbOutputs);
    }
    catch (...)
    {
        return false;
    }
}

int32_t HydraScanPlugin::getNbOutputs() const noexcept
{
    return logic::kNbOutputs;
}

size_t HydraScanPlugin::getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nbInputs,
    const nvinfer1::DynamicPluginTensorDesc* outputs, int32_t nbOutputs) const noexcept
{
    try
    {
        if (nbInputs < 1 || nbOutputs < 1)
        {
            return 0;
        }
        // Sized for the profile's largest x so one engine serves every length up to it; a function of
        // shape and dtype only (not of the tiles-per-chunk setting), recorded by configurePlugin.
        return logic::workspaceSize(toDims(inputs[logic::kInX].max), toDims(inputs[logic::kInBF].max),
            toIoType(outputs[logic::kOutY].desc.type));
    }
    catch (...)
    {
        return 0;
    }
}

const char* HydraScanPlugin::getMetadataString() noexcept
{
    return mMetadata.c_str();
}

int32_t HydraScanPlugin::onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs,
    const nvinfer1::PluginTensorDesc* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        std::string e = logic::checkIoCount(nbInputs, nbOutputs);
        HmScanShape shape{};
        if (e.empty())
        {
            e = logic::validateInputDims(toDimsList(in, nbInputs), &shape);
        }
        if (e.empty())
        {
            e = logic::checkStatesAgree(mAttrs, nbInputs);
        }
        if (e.empty())
        {
            // The CUDA kernel's plan for this shape, and that it fits the engine's workspace.
            e = logic::checkWorkspace(shape, static_cast<HmDType>(logic::toDtypeCode(toIoType(in[logic::kInX].type))),
                mAttrs.workspaceSize);
        }
        if (!e.empty())
        {
            logError(e);
            return 1;
        }
        recordInputCount(nbInputs);
        return 0;
    }
    catch (const std::exception& ex)
    {
        logError(std::string("HydraScan onShapeChange: ") + ex.what());
    }
    return 1;
}

int32_t HydraScanPlugin::enqueue(const nvinfer1::PluginTensorDesc* inputDesc,
    const nvinfer1::PluginTensorDesc* outputDesc, const void* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    try
    {
        // Shapes were validated in onShapeChange; the shape is rebuilt here because enqueue may run
        // with any dims inside the profile.
        const HmScanShape shape{inputDesc[logic::kInX].dims.d[0], inputDesc[logic::kInX].dims.d[1],
            inputDesc[logic::kInX].dims.d[2], inputDesc[logic::kInX].dims.d[3], inputDesc[logic::kInBF].dims.d[2],
            inputDesc[logic::kInBF].dims.d[3]};
        const int act = logic::toDtypeCode(toIoType(inputDesc[logic::kInX].type));
        const int dt = logic::toDtypeCode(toIoType(inputDesc[logic::kInDtF].type));
        if (act < 0 || dt < 0 || toIoType(outputDesc[logic::kOutY].type) != toIoType(inputDesc[logic::kInX].type))
        {
            logError("HydraScan enqueue: unsupported tensor types");
            return 1;
        }
        // enqueue() is not told the input count: it was recorded (and serialized) at configure time.
        if (mAttrs.hasInitialStates < 0)
        {
            logError("HydraScan enqueue: input count unknown (neither configurePlugin nor onShapeChange ran)");
            return 1;
        }
        // TensorRT does not tell enqueue the workspace size; it granted what getWorkspaceSize asked
        // for at build time, recorded (and serialized) as workspace_size. Refuse a plan that needs more
        // (another library, another profile) instead of writing past it.
        const std::string we = logic::checkWorkspace(shape, static_cast<HmDType>(act), mAttrs.workspaceSize);
        if (!we.empty())
        {
            logError(we + " (enqueue)");
            return 1;
        }
        const bool withStates = mAttrs.hasInitialStates == 1;
        HmScanTensors t{};
        t.x = inputs[logic::kInX];
        t.dt_f = inputs[logic::kInDtF];
        t.dt_b = inputs[logic::kInDtB];
        t.A = inputs[logic::kInA];
        t.dt_bias = inputs[logic::kInDtBias];
        t.B_f = inputs[logic::kInBF];
        t.C_f = inputs[logic::kInCF];
        t.B_b = inputs[logic::kInBB];
        t.C_b = inputs[logic::kInCB];
        t.state_f0 = withStates ? static_cast<const float*>(inputs[logic::kInStateF0]) : nullptr;
        t.state_b0 = withStates ? static_cast<const float*>(inputs[logic::kInStateB0]) : nullptr;
        t.y = outputs[logic::kOutY];
        t.state_f = static_cast<float*>(outputs[logic::kOutStateF]);
        t.state_b = static_cast<float*>(outputs[logic::kOutStateB]);
        const std::string e = hydra_scan::launchCuda(shape, static_cast<HmDType>(act), static_cast<HmDType>(dt), t,
            workspace, static_cast<size_t>(mAttrs.workspaceSize), reinterpret_cast<HmCudaStream>(stream));
        if (!e.empty())
        {
            logError(e);
            return 1;
        }
        return 0;
    }
    catch (const std::exception& ex)
    {
        logError(std::string("HydraScan enqueue: ") + ex.what());
    }
    return 1;
}

void HydraScanPlugin::recordInputCount(int32_t nbInputs)
{
    mAttrs.hasInitialStates = logic::hasInitialStates(nbInputs) ? 1 : 0;
    mSerialized.update(mAttrs); // the serialized engine must remember it: enqueue cannot see nbInputs
    mMetadata = logic::describe(mAttrs);
}

nvinfer1::IPluginV3* HydraScanPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources
}

const nvinfer1::PluginFieldCollection* HydraScanPlugin::getFieldsToSerialize() noexcept
{
    return &mSerialCollection;
}

// ---- HydraScanPluginCreator ---------------------------------------------------------------------

HydraScanPluginCreator::HydraScanPluginCreator()
{
    for (const logic::FieldView& f : logic::attributeFieldSpecs())
    {
        mFieldSpecs.emplace_back(f.name, nullptr, static_cast<nvinfer1::PluginFieldType>(f.type), f.length);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldSpecs.size());
    mFieldCollection.fields = mFieldSpecs.data();
}

const char* HydraScanPluginCreator::getPluginName() const noexcept
{
    return logic::kPluginName;
}

const char* HydraScanPluginCreator::getPluginVersion() const noexcept
{
    return logic::kPluginVersion;
}

const char* HydraScanPluginCreator::getPluginNamespace() const noexcept
{
    return logic::kPluginNamespace;
}

const nvinfer1::PluginFieldCollection* HydraScanPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

nvinfer1::IPluginV3* HydraScanPluginCreator::createPlugin(
    const char* name, const nvinfer1::PluginFieldCollection* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        std::vector<logic::FieldView> fields;
        if (fc != nullptr)
        {
            for (int32_t i = 0; i < fc->nbFields; ++i)
            {
                const nvinfer1::PluginField& f = fc->fields[i];
                fields.push_back({f.name, f.data, static_cast<logic::FieldType>(f.type), f.length});
            }
        }
        logic::Attributes attrs;
        std::string e = logic::parseAttributes(fields.data(), static_cast<int32_t>(fields.size()), &attrs);
        if (e.empty() && phase == nvinfer1::TensorRTPhase::kRUNTIME)
        {
            e = logic::checkSerializationVersion(attrs); // an engine built by another library
        }
        if (phase != nvinfer1::TensorRTPhase::kRUNTIME)
        {
            attrs.workspaceSize = -1; // recorded by configurePlugin only, never taken from an ONNX node
        }
        if (!e.empty())
        {
            logError(std::string(e) + " (layer '" + (name != nullptr ? name : "") + "')");
            return nullptr;
        }
        return new HydraScanPlugin(attrs);
    }
    catch (const std::exception& ex)
    {
        logError(std::string("HydraScan createPlugin: ") + ex.what());
    }
    return nullptr;
}

} // namespace trt
} // namespace hieramamba

// ---- Library entry points (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins) ---------------

#define HM_TRT_EXPORT extern "C" __attribute__((visibility("default")))

HM_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static hieramamba::trt::HydraScanPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}

HM_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    hieramamba::trt::loggerFinder().set(finder);
}
