// Drives the HydraScan TensorRT plugin through its IPluginV3 / IPluginCreatorV3One interface, the way
// TensorRT's builder and runtime call it, without libnvinfer or a GPU: only TensorRT headers are
// needed (built when CMake finds them). Dimension expressions are faked through the headers'
// apiv::VDimensionExpr. Device work is never started: enqueue() runs only with B = 0 or in error paths.
#include "../hydra_scan/hydraScanPlugin.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

// The library entry point TensorRT looks up by name (defined in hydraScanPlugin.cpp).
extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{

using namespace nvinfer1;
using hieramamba::trt::HydraScanPlugin;
using hieramamba::trt::HydraScanPluginCreator;

int gFailures = 0;
int gChecks = 0;

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        ++gChecks;                                                                                                     \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            ++gFailures;                                                                                               \
            std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                                \
        }                                                                                                              \
    } while (0)

// ---- Fake dimension expressions ------------------------------------------------------------------

class FakeDimImpl : public apiv::VDimensionExpr
{
public:
    explicit FakeDimImpl(int64_t v)
        : mValue(v)
    {
    }
    bool isConstant() const override
    {
        return mValue >= 0;
    }
    int64_t getConstantValue() const override
    {
        return mValue;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    int64_t mValue; // -1: symbolic
};

class FakeDim : public IDimensionExpr
{
public:
    explicit FakeDim(int64_t v)
        : mFake(v)
    {
        mImpl = &mFake;
    }

private:
    FakeDimImpl mFake;
};

class FakeExprBuilder : public IExprBuilder
{
};

struct ExprPool
{
    std::vector<std::unique_ptr<FakeDim>> dims;
    DimsExprs make(const std::vector<int64_t>& values)
    {
        DimsExprs e{};
        e.nbDims = static_cast<int32_t>(values.size());
        for (size_t i = 0; i < values.size(); ++i)
        {
            dims.push_back(std::make_unique<FakeDim>(values[i]));
            e.d[i] = dims.back().get();
        }
        return e;
    }
};

// ---- Helpers -------------------------------------------------------------------------------------

Dims dimsOf(const std::vector<int64_t>& v)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        d.d[i] = v[i];
    }
    return d;
}

std::vector<std::vector<int64_t>> shapes(int64_t B, int64_t L, int64_t H, int64_t P, int64_t G, int64_t N, bool st)
{
    std::vector<std::vector<int64_t>> s = {{B, L, H, P}, {B, L, H}, {B, L, H}, {H}, {H}, {B, L, G, N}, {B, L, G, N},
        {B, L, G, N}, {B, L, G, N}};
    if (st)
    {
        s.push_back({B, H, P, N});
        s.push_back({B, H, P, N});
    }
    return s;
}

std::vector<DynamicPluginTensorDesc> dynDescs(
    const std::vector<std::vector<int64_t>>& s, DataType act, DataType dt, const std::vector<int64_t>& xMax)
{
    std::vector<DynamicPluginTensorDesc> d(s.size());
    for (size_t i = 0; i < s.size(); ++i)
    {
        d[i].desc.dims = dimsOf(s[i]);
        d[i].desc.format = TensorFormat::kLINEAR;
        d[i].desc.type = (i >= 1 && i <= 4) ? dt : (i >= 9 ? DataType::kFLOAT : act);
        d[i].min = d[i].max = d[i].opt = dimsOf(s[i]);
    }
    d[0].max = dimsOf(xMax);
    return d;
}

std::vector<DynamicPluginTensorDesc> outDescs(int64_t B, int64_t L, int64_t H, int64_t P, int64_t N, DataType act)
{
    std::vector<DynamicPluginTensorDesc> d(3);
    const std::vector<int64_t> shapesOut[3] = {{B, L, H, P}, {B, H, P, N}, {B, H, P, N}};
    for (int i = 0; i < 3; ++i)
    {
        d[i].desc.dims = dimsOf(shapesOut[i]);
        d[i].desc.format = TensorFormat::kLINEAR;
        d[i].desc.type = i == 0 ? act : DataType::kFLOAT;
        d[i].min = d[i].max = d[i].opt = d[i].desc.dims;
    }
    return d;
}

// The first 9 descriptors (no initial states).
std::vector<DynamicPluginTensorDesc> withoutStates(const std::vector<DynamicPluginTensorDesc>& io)
{
    return std::vector<DynamicPluginTensorDesc>(io.begin(), io.begin() + 9);
}

int32_t fieldValue(const PluginFieldCollection* fc, const char* name)
{
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (std::strcmp(fc->fields[i].name, name) == 0 && fc->fields[i].type == PluginFieldType::kINT32)
        {
            return *static_cast<const int32_t*>(fc->fields[i].data);
        }
    }
    return -999;
}

int64_t fieldValue64(const PluginFieldCollection* fc, const char* name)
{
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (std::strcmp(fc->fields[i].name, name) == 0 && fc->fields[i].type == PluginFieldType::kINT64)
        {
            return *static_cast<const int64_t*>(fc->fields[i].data);
        }
    }
    return -999;
}

// The workspace_size field a plugin would serialize now.
int64_t serializedWorkspace(IPluginV3* plugin)
{
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    return fieldValue64(runtime->getFieldsToSerialize(), "workspace_size");
}

// ---- Tests ---------------------------------------------------------------------------------------

void testCreator()
{
    HydraScanPluginCreator creator;
    CHECK(std::string(creator.getPluginName()) == "HydraScan");
    CHECK(std::string(creator.getPluginVersion()) == "1");
    CHECK(std::string(creator.getPluginNamespace()) == "hieramamba");
    const PluginFieldCollection* names = creator.getFieldNames();
    // chunk_size, has_initial_states, serialization_version, workspace_size
    CHECK(names != nullptr && names->nbFields == 4);

    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* list = getCreators(nbCreators);
    CHECK(nbCreators == 1 && list != nullptr && std::string(list[0]->getInterfaceInfo().kind) == "PLUGIN CREATOR_V3ONE");

    const int32_t chunk = 128;
    PluginField f("chunk_size", &chunk, PluginFieldType::kINT32, 1);
    PluginFieldCollection fc{1, &f};
    std::unique_ptr<IPluginV3> plugin(creator.createPlugin("layer0", &fc, TensorRTPhase::kBUILD));
    CHECK(plugin != nullptr);
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    CHECK(build != nullptr && std::string(build->getMetadataString()).find("chunk_size=128") != std::string::npos);

    std::fprintf(stderr, "(an 'unknown attribute' error message is expected next)\n");
    PluginField bad("chunksize", &chunk, PluginFieldType::kINT32, 1);
    PluginFieldCollection badFc{1, &bad};
    CHECK(creator.createPlugin("layer1", &badFc, TensorRTPhase::kBUILD) == nullptr);
    std::unique_ptr<IPluginV3> defaults(creator.createPlugin("layer2", nullptr, TensorRTPhase::kBUILD));
    CHECK(defaults != nullptr);
}

void testBuildAndRuntime()
{
    HydraScanPluginCreator creator;
    std::unique_ptr<IPluginV3> plugin(creator.createPlugin("hydra", nullptr, TensorRTPhase::kBUILD));
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(core != nullptr && build != nullptr && runtime != nullptr);
    CHECK(std::string(core->getPluginName()) == "HydraScan" && std::string(core->getPluginNamespace()) == "hieramamba");
    CHECK(build->getNbOutputs() == 3);

    // Output types.
    DataType inTypes[11];
    for (auto& t : inTypes)
    {
        t = DataType::kFLOAT;
    }
    inTypes[0] = DataType::kHALF;
    DataType outTypes[3];
    CHECK(build->getOutputDataTypes(outTypes, 3, inTypes, 11) == 0);
    CHECK(outTypes[0] == DataType::kHALF && outTypes[1] == DataType::kFLOAT && outTypes[2] == DataType::kFLOAT);

    // Output shapes: dynamic batch and time stay symbolic (the same expression objects).
    ExprPool pool;
    std::vector<DimsExprs> in;
    for (const auto& s : shapes(-1, -1, 8, 64, 1, 64, false))
    {
        in.push_back(pool.make(s));
    }
    DimsExprs out[3];
    FakeExprBuilder builder;
    CHECK(build->getOutputShapes(in.data(), 9, nullptr, 0, out, 3, builder) == 0);
    CHECK(out[0].nbDims == 4 && out[0].d[0] == in[0].d[0] && out[0].d[1] == in[0].d[1] && out[0].d[3] == in[0].d[3]);
    CHECK(out[1].nbDims == 4 && out[1].d[1] == in[0].d[2] && out[1].d[3] == in[5].d[3]);
    in[3] = pool.make({7}); // A with 7 heads vs x with 8
    std::fprintf(stderr, "(an 'H differs' error message is expected next)\n");
    CHECK(build->getOutputShapes(in.data(), 9, nullptr, 0, out, 3, builder) != 0);

    // Formats.
    auto io = dynDescs(shapes(2, 300, 8, 64, 1, 64, true), DataType::kHALF, DataType::kFLOAT, {2, 300, 8, 64});
    auto outs = outDescs(2, 300, 8, 64, 64, DataType::kHALF);
    std::vector<DynamicPluginTensorDesc> all(io);
    all.insert(all.end(), outs.begin(), outs.end());
    bool allOk = true;
    for (int32_t pos = 0; pos < 14; ++pos)
    {
        allOk = allOk && build->supportsFormatCombination(pos, all.data(), 11, 3);
    }
    CHECK(allOk);
    all[11].desc.type = DataType::kFLOAT; // y fp32 while x fp16
    CHECK(!build->supportsFormatCombination(11, all.data(), 11, 3));
    all[11].desc.type = DataType::kHALF;
    all[9].desc.type = DataType::kHALF; // fp16 initial state
    CHECK(!build->supportsFormatCombination(9, all.data(), 11, 3));
    all[9].desc.type = DataType::kFLOAT;
    all[6].desc.format = TensorFormat::kCHW32;
    CHECK(!build->supportsFormatCombination(6, all.data(), 11, 3));
    all[6].desc.format = TensorFormat::kLINEAR;
    all[0].desc.type = DataType::kINT8;
    CHECK(!build->supportsFormatCombination(0, all.data(), 11, 3));

    // configurePlugin records the input count and the workspace; both are serialized for the runtime.
    CHECK(fieldValue64(runtime->getFieldsToSerialize(), "workspace_size") == -1); // not configured yet
    CHECK(build->configurePlugin(io.data(), 11, outs.data(), 3) == 0);
    // The CUDA kernel's per-chunk states: 2 directions x B x H x 5 chunks (64 steps) x P x N fp32, and the
    // decays (2*2*8*5 floats, rounded up to 256 bytes).
    const size_t granted = build->getWorkspaceSize(io.data(), 11, outs.data(), 3);
    CHECK(granted == 2u * 2 * 8 * 5 * 64 * 64 * 4 + 768);
    const PluginFieldCollection* ser = runtime->getFieldsToSerialize();
    CHECK(fieldValue(ser, "has_initial_states") == 1 && fieldValue(ser, "chunk_size") == 256);
    CHECK(fieldValue(ser, "serialization_version") == 3);
    CHECK(fieldValue64(ser, "workspace_size") == static_cast<int64_t>(granted)); // what getWorkspaceSize asked for
    const std::string metadata = build->getMetadataString();
    CHECK(metadata.find("workspace_size=" + std::to_string(granted)) != std::string::npos);

    // A profile whose largest shape the CUDA kernel cannot run fails configurePlugin (no engine that
    // would run with a zero workspace); so does one whose maximum is not known.
    {
        std::unique_ptr<IPluginV3> p2(creator.createPlugin("big", nullptr, TensorRTPhase::kBUILD));
        auto* b2 = static_cast<IPluginV3OneBuild*>(p2->getCapabilityInterface(PluginCapabilityType::kBUILD));
        auto tooBig
            = dynDescs(shapes(1, 10, 2, 160, 1, 160, false), DataType::kFLOAT, DataType::kFLOAT, {1, 10, 2, 160});
        auto tooBigOut = outDescs(1, 10, 2, 160, 160, DataType::kFLOAT);
        std::fprintf(stderr, "(a 'cannot be planned ... shared memory' error message is expected next)\n");
        CHECK(b2->configurePlugin(tooBig.data(), 9, tooBigOut.data(), 3) != 0);
        CHECK(b2->getWorkspaceSize(tooBig.data(), 9, tooBigOut.data(), 3) == 0);
        auto unknown
            = dynDescs(shapes(2, 300, 8, 64, 1, 64, false), DataType::kHALF, DataType::kFLOAT, {2, -1, 8, 64});
        std::fprintf(stderr, "(an 'unknown dimension' error message is expected next)\n");
        CHECK(b2->configurePlugin(unknown.data(), 9, outs.data(), 3) != 0);
        CHECK(serializedWorkspace(p2.get()) == -1);
        // A second profile with a longer maximum: the engine records the larger workspace.
        auto longer
            = dynDescs(shapes(2, 300, 8, 64, 1, 64, false), DataType::kHALF, DataType::kFLOAT, {2, 1000, 8, 64});
        CHECK(b2->configurePlugin(longer.data(), 9, outs.data(), 3) == 0);
        CHECK(b2->configurePlugin(withoutStates(io).data(), 9, outs.data(), 3) == 0);
        const size_t longWs = b2->getWorkspaceSize(longer.data(), 9, outs.data(), 3);
        CHECK(longWs > granted);
        CHECK(serializedWorkspace(p2.get()) == static_cast<int64_t>(longWs));
    }

    // Runtime phase: recreate from the serialized fields, as engine deserialization does.
    std::unique_ptr<IPluginV3> restored(creator.createPlugin("hydra", ser, TensorRTPhase::kRUNTIME));
    CHECK(restored != nullptr);
    auto* rt = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::unique_ptr<IPluginV3> attached(rt->attachToContext(nullptr));
    CHECK(attached != nullptr);
    auto* art = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(fieldValue(art->getFieldsToSerialize(), "has_initial_states") == 1);

    // An engine serialized by the sequential-kernel library (no serialization_version) is refused at
    // the runtime phase, but its fields still build a plugin at the build phase (ONNX attributes).
    PluginFieldCollection oldFields{2, ser->fields};
    CHECK(std::string(ser->fields[2].name) == "serialization_version");
    std::fprintf(stderr, "(a 'rebuild the engine' error message is expected next)\n");
    CHECK(creator.createPlugin("hydra", &oldFields, TensorRTPhase::kRUNTIME) == nullptr);
    std::unique_ptr<IPluginV3> fromOnnx(creator.createPlugin("hydra", &oldFields, TensorRTPhase::kBUILD));
    CHECK(fromOnnx != nullptr);

    // This version's engines must record their workspace; a value given at the build phase (an ONNX
    // node) is not taken: only configurePlugin records one.
    PluginFieldCollection noWorkspace{3, ser->fields};
    CHECK(std::string(ser->fields[3].name) == "workspace_size");
    std::fprintf(stderr, "(a 'does not record the workspace' error message is expected next)\n");
    CHECK(creator.createPlugin("hydra", &noWorkspace, TensorRTPhase::kRUNTIME) == nullptr);
    {
        std::unique_ptr<IPluginV3> fromNode(creator.createPlugin("hydra", ser, TensorRTPhase::kBUILD));
        CHECK(fromNode != nullptr && serializedWorkspace(fromNode.get()) == -1);
    }

    // A 9-input graph contradicts the recorded has_initial_states=1.
    auto nine = dynDescs(shapes(2, 300, 8, 64, 1, 64, false), DataType::kHALF, DataType::kFLOAT, {2, 300, 8, 64});
    std::fprintf(stderr, "(a 'has_initial_states' error message is expected next)\n");
    CHECK(static_cast<IPluginV3OneBuild*>(restored->getCapabilityInterface(PluginCapabilityType::kBUILD))
              ->configurePlugin(nine.data(), 9, outs.data(), 3)
        != 0);

    // onShapeChange validates concrete shapes.
    std::vector<PluginTensorDesc> concrete;
    for (const auto& d : io)
    {
        concrete.push_back(d.desc);
    }
    std::vector<PluginTensorDesc> concreteOut;
    for (const auto& d : outs)
    {
        concreteOut.push_back(d.desc);
    }
    CHECK(art->onShapeChange(concrete.data(), 11, concreteOut.data(), 3) == 0);
    concrete[7].dims.d[1] = 299;
    std::fprintf(stderr, "(an 'L differs' error message is expected next)\n");
    CHECK(art->onShapeChange(concrete.data(), 11, concreteOut.data(), 3) != 0);

    // enqueue with B = 0: the full argument plumbing, no device work.
    auto empty = dynDescs(shapes(0, 5, 8, 4, 1, 16, true), DataType::kFLOAT, DataType::kFLOAT, {0, 5, 8, 4});
    std::vector<PluginTensorDesc> emptyIn;
    for (const auto& d : empty)
    {
        emptyIn.push_back(d.desc);
    }
    auto emptyOut = outDescs(0, 5, 8, 4, 16, DataType::kFLOAT);
    std::vector<PluginTensorDesc> emptyOutDesc;
    for (const auto& d : emptyOut)
    {
        emptyOutDesc.push_back(d.desc);
    }
    std::vector<float> params(8, -1.0f);
    const void* inputs[11] = {nullptr, nullptr, nullptr, params.data(), params.data(), nullptr, nullptr, nullptr,
        nullptr, nullptr, nullptr};
    void* outputs[3] = {nullptr, nullptr, nullptr};
    CHECK(art->enqueue(emptyIn.data(), emptyOutDesc.data(), inputs, outputs, nullptr, nullptr) == 0);

    // An engine whose recorded workspace is smaller than this run's plan (built by a library that
    // sized it otherwise, or a shape beyond the profile): onShapeChange and enqueue refuse before any
    // device work, instead of writing past what TensorRT granted.
    {
        std::vector<PluginField> small(ser->fields, ser->fields + ser->nbFields);
        const int64_t tooSmall = static_cast<int64_t>(granted) - 256;
        small[3].data = &tooSmall;
        PluginFieldCollection smallFc{static_cast<int32_t>(small.size()), small.data()};
        std::unique_ptr<IPluginV3> starved(creator.createPlugin("hydra", &smallFc, TensorRTPhase::kRUNTIME));
        CHECK(starved != nullptr);
        auto* srt = static_cast<IPluginV3OneRuntime*>(starved->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        concrete[7].dims.d[1] = 300;
        std::fprintf(stderr, "(two 'needs ... bytes of workspace' error messages are expected next)\n");
        CHECK(srt->onShapeChange(concrete.data(), 11, concreteOut.data(), 3) != 0);
        const void* none[11] = {};
        void* noneOut[3] = {};
        CHECK(srt->enqueue(concrete.data(), concreteOut.data(), none, noneOut, nullptr, nullptr) != 0);
        // The same sizes with what was granted pass onShapeChange.
        CHECK(art->onShapeChange(concrete.data(), 11, concreteOut.data(), 3) == 0);
    }

    // A plugin that was never configured does not know its input count: enqueue refuses.
    std::unique_ptr<IPluginV3> fresh(creator.createPlugin("fresh", nullptr, TensorRTPhase::kBUILD));
    auto* frt = static_cast<IPluginV3OneRuntime*>(fresh->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::fprintf(stderr, "(an 'input count unknown' error message is expected next)\n");
    CHECK(frt->enqueue(emptyIn.data(), emptyOutDesc.data(), inputs, outputs, nullptr, nullptr) != 0);
}

} // namespace

int main()
{
    testCreator();
    testBuildAndRuntime();
    std::printf("hydraScanPluginTest (TensorRT %d.%d headers): %d checks, %d failures\n", NV_TENSORRT_MAJOR,
        NV_TENSORRT_MINOR, gChecks, gFailures);
    return gFailures == 0 ? 0 : 1;
}
