// The native capture engine: the per-op work of recorder/capture.py, in C++.
//
// Mechanism: a boxed fallback registered for the `Fake` dispatch key, a functionality key that
// sits right below `Python` (where a TorchDispatchMode is called) and that torch's own kernels
// leave unused.  While a step is captured, the training thread's TLS includes that key, so every
// op reaches the fallback below autograd and below CompositeImplicitAutograd decompositions, at
// the same level the Python dispatch mode sees it.  The fallback records the op, runs it with the
// key excluded (ops a kernel runs inside are not seen, as under the mode) and records its outputs.
//
// What each op records, and when a tensor gets statistics, follows recorder/capture.py and
// recorder/identity.py line by line (their docstrings say why); the equivalence tests in
// tests/recorder/test_engines.py compare the two engines op by op.  What C++ cannot
// finish alone goes back to Python through a callback: the statistics of anything the one-pass
// kernel does not cover (other dtypes and devices, histograms, the rare tensor
// StatsCollector._add_fused refuses), the first look at each op overload's schema, and whether a
// (role, module, op, source) is in the values selection (cached per key).
//
// Nothing here holds a tensor across ops except value copies: tensor objects are tracked by
// their TensorImpl address with a weak reference that tells a reused address from the object.

#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/SequenceNumber.h>
#include <ATen/record_function.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/DynamicTypes.h>
#include <torch/csrc/utils/tensor_memoryformats.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/autograd/node.h>
#include <torch/csrc/jit/python/pybind_utils.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

constexpr c10::DispatchKey kKey = c10::DispatchKey::Fake;

// tracefmt.model.Role and Phase codes (part of the format).
constexpr int8_t ACTIVATION = 0, INPUT = 1, PARAMETER = 2, GRADIENT = 4, OPTIMIZER_STATE = 5;
constexpr int8_t OTHER = 0, FORWARD = 1, BACKWARD = 2, OPTIMIZER = 3;
constexpr uint64_t ACCUMULATE_GRAD_SEQ = UINT64_MAX;
// _CANCEL of recorder.stats.cpu (tests/recorder/test_engines.py checks that they agree).
constexpr double CANCEL = 0.1;

// recorder/stats/fused_stats.c's result row and entry point (passed in from Python).
struct FusedRow {
  double sum, sumsq, min, max;
  int64_t nonzero, negzero, nan, inf;
  uint64_t fingerprint;
};
using FusedFn = int (*)(const void*, int64_t, int, int, FusedRow*);

using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
using StrongImpl = c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

struct OpMeta {
  int32_t name = -1;         // string id of "aten::mm.default"
  bool record = false;       // aten:: and fsdp:: ops are recorded; others run through
  bool comm = false;         // c10d and functional collectives: the Python engine's business
  bool uninitialized = false;
  bool shape_only = false;  // reads its tensor arguments' shapes, not their bytes (OpInfo)
  std::vector<uint8_t> written, write_only, written_if_extra;
  std::vector<uint8_t> overwrites;  // written arguments whose bytes it overwrites unread (OpInfo)
  int written_if_flag = -1;
  std::vector<uint8_t> view_returns;
  std::vector<uint8_t> arg_kind;  // Attr kinds, per argument

  bool view_of_return(size_t i) const {
    size_t n = view_returns.size();
    if (i < n && n > 1) return view_returns[i];
    return n && view_returns[0];
  }
};

struct Slot {
  int64_t value = 0, gen = 0, version = 0;
  intptr_t key = 0;
  int32_t name = -1;
  int8_t role = ACTIVATION;
  std::vector<int64_t> history;
  WeakImpl weak{StrongImpl()};
};

// A value an op wrote, findable by its bytes' place: a tensor object never seen before that
// views exactly these bytes while no op has written the storage since (autograd's unpacked copy of
// a saved output, a `.data`) holds this value.
struct Made {
  int64_t value = 0, gen = 0, offset = 0;
  uint64_t layout = 0;  // sizes and strides (layout_of)
  int8_t dtype = 0;
  // the storage itself, not only its address, which a later storage may reuse once it is freed
  c10::weak_intrusive_ptr<c10::StorageImpl> storage{
      c10::intrusive_ptr<c10::StorageImpl>::reclaim(nullptr)};
  const c10::StorageImpl* impl = nullptr;
};

// A blank storage (recorder/identity.py): bytes an op allocated without writing them
// (`empty`), which no op has written since.  Its values carry the generation ~gen, so that
// current() refuses them; code outside the dispatcher may have filled them (DDP's bucket
// rebuild writes bucket indices into an at::empty tensor through a TensorAccessor).
struct Blank {
  int64_t gen = 0;
  // the storage itself: once it is freed, its address may hold another storage
  c10::weak_intrusive_ptr<c10::StorageImpl> storage{
      c10::intrusive_ptr<c10::StorageImpl>::reclaim(nullptr)};
};

struct Named {
  WeakImpl weak{StrongImpl()};
  int8_t role = ACTIVATION;
  int32_t name = -1;
};

// How an int argument reaches Python: as an int, or as the torch.dtype / layout / memory format
// its schema type says it is (what the dispatch mode is given).
enum class Kind : uint8_t { Plain, ScalarType, Layout, MemoryFormat };

struct Attr {
  int32_t name;
  Kind kind;
  c10::IValue value;
};

// Whether the values an op wrote are final when it returns: yes; never while the step is
// recorded (a point-to-point op's, a functional collective's before its wait_tensor); or later,
// once the program waits for them (a c10d collective left running: measured when an op next
// touches their storage, or at the end of the step after waiting on it).
enum class Written : int { Unmeasured = 0, Final = 1, Later = 2 };

// A value of a collective left running, to measure once final.
struct Later {
  int64_t index;
  at::Tensor tensor;
  int32_t module, op;
  int64_t token;  // the collective's, for asking Python whether it has completed
};

struct ArgTensor {
  at::Tensor t;
  int32_t pos, item;
};

// One captured step's rows, handed to Python at finish (and read on the writer thread).
struct StepData {
  // tensors
  std::vector<int8_t> dtype, role;
  std::vector<int32_t> device, name, ndim;
  std::vector<int64_t> dims;  // per tensor: shape then strides
  std::vector<int64_t> producer, producer_slot, version, offset;
  // ops
  std::vector<int32_t> op_name, op_module;
  std::vector<int8_t> op_phase;
  std::vector<int64_t> inputs, input_end, outputs, output_end;  // inputs: (value, pos, item)
  std::vector<std::vector<Attr>> attrs;
  std::vector<int64_t> host_ns, start_ns;
  std::vector<int64_t> mem_bytes;  // bytes of the storage each op's outputs newly hold
  // statistics from the one-pass kernel: (index, numel), 5 floats, 4 ints per row
  std::vector<int64_t> stat_index, stat_numel, stat_ints;
  std::vector<uint8_t> stat_fingerprint_only;  // 1: an empty tensor, only its fingerprint
  std::vector<double> stat_floats;
  std::vector<std::pair<int64_t, int64_t>> aliases;
  // values
  std::vector<std::pair<int64_t, at::Tensor>> values;
  std::vector<std::tuple<int64_t, int32_t, int32_t>> tentative;
  std::vector<std::string> strings;
  std::string error;  // the first failure, "" if none
  int64_t error_op = -1;
};

class Engine {
 public:
  // -- configuration (Python, once) -------------------------------------------------------
  py::object describe_cb, observe_cb, select_cb, comm_before_cb, comm_after_cb, later_done_cb;
  std::unordered_map<int, py::object> dtypes;  // ScalarType code -> tracefmt DType
  FusedFn fused = nullptr;
  bool stats = false, views = false, values = false;
  int64_t hist_bins = 0, small_numel = 1 << 14;
  std::vector<uint8_t> supported =
      std::vector<uint8_t>(static_cast<size_t>(c10::ScalarType::NumOptions), 0);
  bool is_supported(const at::Tensor& t) const {
    auto i = static_cast<size_t>(t.scalar_type());
    return i < supported.size() && supported[i];
  }

  // -- per step ---------------------------------------------------------------------------
  // Read by any thread the TLS reached (autograd's device threads): atomic.
  std::atomic<bool> active{false}, failed{false};
  int backward_depth = 0, optimizer_depth = 0;
  bool fresh_state = false;
  std::vector<int32_t> stack;
  std::vector<uint64_t> bound_seq;
  std::vector<int32_t> bound_path;
  int64_t t0 = 0;  // the step's start, ns on the monotonic clock Python's perf_counter_ns reads
  StepData d;

  void start() {
    clear_step();
    devices_.clear();
    stack.clear();
    bound_seq.clear();
    bound_path.clear();
    backward_depth = optimizer_depth = 0;
    fresh_state = false;
    failed = false;
    intern("");  // id 0: the empty module path
    owner = std::this_thread::get_id();
    active = true;
  }

  // Module hooks, optimizer hooks and names may come from any thread; only the training
  // thread's (the one that started the step) are this step's.
  bool on_owner() const { return std::this_thread::get_id() == owner; }

  // Ops reach the fallback only while this thread's TLS includes the key.
  void enable(bool on) {
    owner = std::this_thread::get_id();
    c10::impl::tls_set_dispatch_key_included(kKey, on);
  }
  std::thread::id owner;
  std::atomic<bool> foreign{false};

  StepData finish() {
    enable(false);
    active = false;
    if (foreign.exchange(false) && d.error.empty()) {
      d.error =
          "ops ran on another thread than the training loop's (autograd's device threads?) and "
          "were not recorded; record this job with engine='python'";
      d.error_op = static_cast<int64_t>(d.op_name.size());
    }
    d.strings = std::move(strings_);
    StepData out = std::move(d);
    clear_step();
    return out;
  }

  // Drop everything one step holds: its rows, strings, tensor table and pending values.
  void clear_step() {
    d = StepData();
    strings_.clear();
    string_ids_.clear();
    objects_.clear();
    named_.clear();
    gens_.clear();
    made_.clear();
    blank_.clear();
    measured_.clear();
    selected_.clear();
    step_ops_.clear();
    step_args_.clear();
    later_.clear();
  }

  int32_t intern(const std::string& s) {
    auto it = string_ids_.find(s);
    if (it != string_ids_.end()) return it->second;
    auto id = static_cast<int32_t>(strings_.size());
    strings_.push_back(s);
    string_ids_.emplace(s, id);
    return id;
  }

  // -- module and phase tracking (recorder.tracking.PhaseTracker calls these) ------------
  void enter_module(const std::string& path) {
    if (!active || !on_owner()) return;
    stack.push_back(intern(path));
    boundary();
  }
  void exit_module() {
    if (!active || !on_owner()) return;
    if (!stack.empty()) stack.pop_back();
    boundary();
  }
  void boundary() {
    bound_seq.push_back(at::sequence_number::peek());
    bound_path.push_back(stack.empty() ? 0 : stack.back());
  }

  // -- naming (identity.TensorTable.name) -------------------------------------------------
  void set_depths(int backward, int optimizer, bool fresh) {
    if (!active || !on_owner()) return;
    backward_depth = backward;
    optimizer_depth = optimizer;
    fresh_state = fresh;
  }

  void name(const at::Tensor& t, int8_t role, const std::string& name) {
    if (!active || !on_owner()) return;
    auto* impl = t.unsafeGetTensorImpl();
    int32_t id = intern(name);
    named_[impl] = Named{WeakImpl(t.getIntrusivePtr()), role, id};
    Slot* slot = find(impl);
    if (slot != nullptr && slot->name != id) {
      slot->role = role;
      slot->name = id;
      for (int64_t i : slot->history) {
        d.role[i] = role;
        d.name[i] = id;
      }
    }
  }

  int8_t role_of(int64_t index) const { return d.role.at(index); }

  // The values of collectives left running, measured now (the caller has waited on them).
  void measure_all_later() {
    c10::impl::ExcludeDispatchKeyGuard guard(kKey);
    try {
      while (!later_.empty()) measure_later(later_.begin()->first, false);
    } catch (py::error_already_set&) {
      later_.clear();
      throw;  // KeyboardInterrupt and its kind
    } catch (const std::exception& e) {
      later_.clear();
      fail(e.what());
    }
  }

  // The values of collectives left running in the storage at `key`; with `check`, only those
  // whose collective has completed (an op touched them: the program waited for them, or reads
  // them too early, and then they are measured at the end of the step).
  void measure_later(intptr_t key, bool check) {
    auto it = later_.find(key);
    if (it == later_.end()) return;
    std::vector<Later> values = std::move(it->second);
    later_.erase(it);
    std::vector<Later> keep;
    for (auto& v : values) {
      if (check && !later_done(v.token)) {
        keep.push_back(std::move(v));
      } else {
        observe(v.index, v.tensor, v.module, v.op, -1);
      }
    }
    if (!keep.empty()) later_[key] = std::move(keep);
  }

  bool later_done(int64_t token) {
    try {
      py::gil_scoped_acquire gil;
      return later_done_cb(token).cast<bool>();
    } catch (py::error_already_set& e) {
      throw_python(e);
    }
  }

  // -- the op -----------------------------------------------------------------------------
  void run(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack_) {
    c10::impl::ExcludeDispatchKeyGuard guard(kKey);
    auto below = ks & c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER, kKey);
    if (!active || failed) {
      op.redispatchBoxed(below, stack_);
      return;
    }
    if (std::this_thread::get_id() != owner) {
      // torch copies the TLS to autograd's device worker threads: their ops would race this
      // thread's.  The Python engine records those (engine='auto' takes it on CUDA).
      foreign = true;  // reported at finish: this thread must not touch the step's rows
      op.redispatchBoxed(below, stack_);
      return;
    }
    const OpMeta* meta = nullptr;
    try {
      meta = &this->meta(op);
    } catch (py::error_already_set&) {
      throw;  // KeyboardInterrupt and its kind: the step ends as without the recorder
    } catch (const std::exception& e) {
      fail(e.what());
    }
    if (meta == nullptr || !meta->record) {
      op.redispatchBoxed(below, stack_);
      return;
    }
    Pending p;
    try {
      // Profiler scopes around the engine's own work: under torch.profiler the op's self time
      // is then the op's, and the engine's shows as its own rows.
      RECORD_USER_SCOPE("tracefmt::capture_before");
      before(*meta, op, *stack_, p);
    } catch (py::error_already_set&) {
      throw;
    } catch (const std::exception& e) {
      fail(e.what());
      op.redispatchBoxed(below, stack_);
      return;
    }
    int64_t token = -1;
    if (meta->comm) {
      try {
        token = comm_before(op, *stack_);
      } catch (py::error_already_set&) {
        throw;
      } catch (const std::exception& e) {
        fail(e.what());
        op.redispatchBoxed(below, stack_);
        return;
      }
    }
    int64_t start = now_ns();
    op.redispatchBoxed(below, stack_);
    int64_t end = now_ns();  // the op's own time: the recorder's callbacks below are not in it
    Written written = Written::Final;
    if (meta->comm) {
      try {
        written = comm_after(op, *stack_, token);
      } catch (py::error_already_set&) {
        throw;
      } catch (const std::exception& e) {
        fail(e.what());
        return;
      }
    }
    try {
      RECORD_USER_SCOPE("tracefmt::capture_after");
      after(*meta, op, *stack_, p, end - start, start - t0, written, token);
    } catch (py::error_already_set&) {
      throw;
    } catch (const std::exception& e) {
      fail(e.what());
    }
  }

 private:
  struct Pending {
    std::vector<ArgTensor> tensors;
    std::vector<at::Tensor> written;
    std::vector<int64_t> inputs;  // triples
    std::vector<Attr> attrs;
    int8_t phase = OTHER;
    int32_t module = 0;
    int32_t grad_of = -1;  // string id of "<param>.grad"
  };

  std::vector<std::string> strings_;
  std::unordered_map<std::string, int32_t> string_ids_;
  std::vector<OpMeta> metas_;
  std::unordered_map<const void*, int32_t> meta_index_;
  std::unordered_map<c10::TensorImpl*, Slot> objects_;
  std::unordered_map<c10::TensorImpl*, Named> named_;
  std::unordered_map<intptr_t, int64_t> gens_;
  std::unordered_map<intptr_t, std::vector<Made>> made_;  // by storage
  std::unordered_map<intptr_t, Blank> blank_;             // by storage
  std::vector<uint8_t> measured_;
  std::unordered_map<int32_t, int32_t> devices_;
  std::unordered_map<int64_t, bool> selected_;
  std::unordered_map<intptr_t, std::vector<Later>> later_;  // by storage

  // A communication op: Python's recorder.collectives describes it (its "c10d" attribute) and,
  // after it ran, makes its values final; both see the arguments as the dispatch mode would.
  int64_t comm_before(const c10::OperatorHandle& op, torch::jit::Stack& st) {
    size_t n = op.schema().arguments().size();
    auto args = torch::jit::last(st, n);
    try {
      py::gil_scoped_acquire gil;
      py::tuple py_args(n);
      for (size_t i = 0; i < n; ++i) py_args[i] = torch::jit::toPyObject(args[i]);
      const auto& schema = op.schema();
      std::string overload = schema.overload_name().empty() ? "default" : schema.overload_name();
      return comm_before_cb(schema.operator_name().name, overload, py_args).cast<int64_t>();
    } catch (py::error_already_set& e) {
      throw_python(e);
    }
  }

  Written comm_after(const c10::OperatorHandle& op, torch::jit::Stack& st, int64_t token) {
    size_t n = op.schema().returns().size();
    auto rets = torch::jit::last(st, n);
    try {
      py::gil_scoped_acquire gil;
      py::object out;
      if (n == 1) {
        out = torch::jit::toPyObject(rets[0]);
      } else {
        py::tuple t(n);
        for (size_t i = 0; i < n; ++i) t[i] = torch::jit::toPyObject(rets[i]);
        out = t;
      }
      auto index = static_cast<int64_t>(d.op_name.size());
      return static_cast<Written>(comm_after_cb(token, index, out).cast<int>());
    } catch (py::error_already_set& e) {
      throw_python(e);
    }
  }

  // CLOCK_MONOTONIC, as time.perf_counter_ns on Linux (libstdc++'s steady_clock reads it)
  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  void fail(const std::string& what) {
    if (failed) return;
    failed = true;
    d.error = what;
    d.error_op = static_cast<int64_t>(d.op_name.size());
  }

  const OpMeta& meta(const c10::OperatorHandle& op) {
    const void* key = &op.schema();
    auto it = meta_index_.find(key);
    if (it != meta_index_.end()) return metas_[it->second];
    const auto& schema = op.schema();
    std::string overload = schema.overload_name().empty() ? "default" : schema.overload_name();
    std::string qualified = schema.operator_name().name + "." + overload;
    OpMeta m;
    try {
      py::gil_scoped_acquire gil;
      // recorder.engine.stepcapture.OpFacts, read by field name
      py::object info = describe_cb(schema.operator_name().name, overload);
      m.record = info.attr("record").cast<bool>();
      m.comm = info.attr("comm").cast<bool>();
      size_t n = schema.arguments().size();
      m.written.assign(n, 0);
      m.write_only.assign(n, 0);
      m.written_if_extra.assign(n, 0);
      for (auto i : info.attr("written").cast<std::vector<int>>()) m.written.at(i) = 1;
      for (auto i : info.attr("write_only").cast<std::vector<int>>()) m.write_only.at(i) = 1;
      py::object written_if = info.attr("written_if");
      if (!written_if.is_none()) {
        auto wi = written_if.cast<std::pair<int, std::vector<int>>>();
        m.written_if_flag = wi.first;
        for (auto i : wi.second) m.written_if_extra.at(i) = 1;
      }
      for (auto v : info.attr("view_returns").cast<std::vector<bool>>())
        m.view_returns.push_back(v ? 1 : 0);
      m.uninitialized = info.attr("uninitialized").cast<bool>();
      m.shape_only = info.attr("shape_only").cast<bool>();
      m.overwrites.assign(n, 0);
      for (auto i : info.attr("overwrites").cast<std::vector<int>>()) m.overwrites.at(i) = 1;
    } catch (py::error_already_set& e) {
      throw_python(e);
    }
    for (const auto& a : schema.arguments()) m.arg_kind.push_back(static_cast<uint8_t>(kind_of(a)));
    // Op and argument names live in the step's string table, interned per step (below).
    metas_.push_back(std::move(m));
    names_.push_back(qualified);
    std::vector<std::string> args;
    for (const auto& a : schema.arguments()) args.push_back(a.name());
    arg_names_.push_back(std::move(args));
    auto id = static_cast<int32_t>(metas_.size() - 1);
    meta_index_.emplace(key, id);
    return metas_[id];
  }

  // Per overload: its qualified name and argument names (interned into each step's strings).
  std::vector<std::string> names_;
  std::vector<std::vector<std::string>> arg_names_;
  std::unordered_map<int64_t, int32_t> step_ops_, step_args_;  // this step's string ids

  int32_t op_string(const OpMeta& m) {
    auto id = static_cast<int64_t>(&m - metas_.data());
    auto it = step_ops_.find(id);
    if (it != step_ops_.end()) return it->second;
    int32_t s = intern(names_[id]);
    step_ops_.emplace(id, s);
    return s;
  }

  int32_t arg_string(const OpMeta& m, size_t pos) {
    auto id = static_cast<int64_t>(&m - metas_.data()) * 4096 + static_cast<int64_t>(pos);
    auto it = step_args_.find(id);
    if (it != step_args_.end()) return it->second;
    int32_t s = intern(arg_names_[id / 4096][pos]);
    step_args_.emplace(id, s);
    return s;
  }

  static Kind kind_of(const c10::Argument& a) {
    c10::TypePtr t = a.real_type();
    if (auto opt = t->cast<c10::OptionalType>()) t = opt->getElementType();
    switch (t->kind()) {
      case c10::TypeKind::ScalarTypeType:
        return Kind::ScalarType;
      case c10::TypeKind::LayoutType:
        return Kind::Layout;
      case c10::TypeKind::MemoryFormatType:
        return Kind::MemoryFormat;
      default:
        return Kind::Plain;
    }
  }

  static bool is_default(const c10::Argument& arg, const c10::IValue& v) {
    const auto& dv = arg.default_value();
    return dv.has_value() && *dv == v;
  }

  static intptr_t storage_key(const at::Tensor& t) {
    auto* impl = t.unsafeGetTensorImpl();
    if (!impl->has_storage()) return 0;
    try {
      return reinterpret_cast<intptr_t>(impl->storage().data());
    } catch (const std::exception&) {
      return 0;
    }
  }

  Slot* find(c10::TensorImpl* impl) {
    auto it = objects_.find(impl);
    if (it == objects_.end() || it->second.weak.expired()) return nullptr;
    return &it->second;
  }

  const Named* named(c10::TensorImpl* impl) {
    auto it = named_.find(impl);
    if (it == named_.end() || it->second.weak.expired()) return nullptr;
    return &it->second;
  }

  int64_t current(const at::Tensor& t) {
    Slot* s = find(t.unsafeGetTensorImpl());
    if (s == nullptr) return -1;
    if (s->key == 0) return s->value;
    auto g = gens_.find(s->key);
    return (g == gens_.end() ? 0 : g->second) == s->gen ? s->value : -1;
  }

  int32_t device_id(const at::Tensor& t) {
    auto dev = t.device();
    int32_t k = static_cast<int32_t>(dev.type()) * 1024 + dev.index() + 1;
    auto it = devices_.find(k);
    if (it != devices_.end()) return it->second;
    int32_t id = intern(dev.str());
    devices_.emplace(k, id);
    return id;
  }

  Slot& add(const at::Tensor& t, int64_t producer, int64_t producer_slot, int64_t version,
            int8_t role, int32_t name, intptr_t key, Slot* slot) {
    int64_t index = static_cast<int64_t>(d.dtype.size());
    d.dtype.push_back(static_cast<int8_t>(t.scalar_type()));
    d.role.push_back(role);
    d.name.push_back(name);
    d.device.push_back(device_id(t));
    auto sizes = t.sizes();
    auto strides = t.strides();
    d.ndim.push_back(static_cast<int32_t>(sizes.size()));
    d.dims.insert(d.dims.end(), sizes.begin(), sizes.end());
    d.dims.insert(d.dims.end(), strides.begin(), strides.end());
    d.producer.push_back(producer);
    d.producer_slot.push_back(producer_slot);
    d.version.push_back(version);
    d.offset.push_back(t.storage_offset());
    measured_.push_back(0);
    int64_t gen = 0;
    if (key != 0) {
      auto g = gens_.find(key);
      gen = g == gens_.end() ? 0 : g->second;
      if (!blank_.empty() && blank_gen(key) == gen) gen = ~gen;  // a view of blank bytes
    }
    if (slot == nullptr) {
      auto* impl = t.unsafeGetTensorImpl();
      Slot s;
      s.weak = WeakImpl(t.getIntrusivePtr());
      s.history.push_back(index);
      auto& ref = objects_[impl];
      ref = std::move(s);
      slot = &ref;
    } else {
      slot->history.push_back(index);
    }
    slot->value = index;
    slot->key = key;
    slot->gen = gen;
    slot->version = version;
    slot->role = role;
    slot->name = name;
    return *slot;
  }

  static uint64_t layout_of(const at::Tensor& t) {
    uint64_t h = 1469598103934665603ULL;  // FNV-1a over ndim, sizes and strides
    auto mix = [&h](int64_t v) { h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ULL; };
    mix(t.dim());
    for (auto v : t.sizes()) mix(v);
    for (auto v : t.strides()) mix(v);
    return h;
  }

  // The value an op of this step wrote that `t` (an object never seen) views exactly, if no op
  // wrote its storage since: `t` then holds it (see Made); -1 when none does.
  int64_t made_value(const at::Tensor& t, intptr_t key) {
    auto it = made_.find(key);
    if (it == made_.end()) return -1;
    auto g = gens_.find(key);
    int64_t gen = g == gens_.end() ? 0 : g->second;
    int64_t offset = t.storage_offset();
    auto dtype = static_cast<int8_t>(t.scalar_type());
    uint64_t layout = layout_of(t);
    for (auto m = it->second.rbegin(); m != it->second.rend(); ++m) {
      if (m->gen == gen && m->offset == offset && m->dtype == dtype && m->layout == layout &&
          !m->storage.expired() && m->impl == t.storage().unsafeGetStorageImpl())
        return m->value;
    }
    return -1;
  }

  int64_t read(const at::Tensor& t, int32_t module, int32_t op) {
    auto* impl = t.unsafeGetTensorImpl();
    Slot* slot = find(impl);
    if (slot == nullptr && named(impl) == nullptr) {
      intptr_t key = storage_key(t);
      int64_t value = key == 0 ? -1 : made_value(t, key);
      if (value >= 0) {  // the same bytes as a value the step made: this object holds it
        Slot s;
        s.weak = WeakImpl(t.getIntrusivePtr());
        s.history.push_back(value);
        s.value = value;
        s.key = key;
        s.gen = gens_[key];
        s.version = d.version[value];
        s.role = d.role[value];
        s.name = d.name[value];
        objects_[impl] = std::move(s);
        return value;
      }
    }
    int64_t version = slot == nullptr ? 0 : slot->version + 1;
    int8_t role = INPUT;
    int32_t name = -1;
    if (const Named* n = named(impl)) {
      role = n->role;
      name = n->name;
    } else if (slot != nullptr) {
      role = slot->role;
      name = slot->name;
    }
    intptr_t key = storage_key(t);
    if (!blank_.empty() && key != 0) blank_.erase(key);  // its bytes are measured now
    int64_t index = add(t, -1, 0, version, role, name, key, slot).value;
    observe(index, t, module, op, -1);
    return index;
  }

  // The generation at which storage `key` became blank, while it still exists; else -1.
  int64_t blank_gen(intptr_t key) {
    auto it = blank_.find(key);
    if (it == blank_.end()) return -1;
    if (it->second.storage.expired()) {
      blank_.erase(it);
      return -1;
    }
    return it->second.gen;
  }

  // Mark the value `o` holds (`s`), just made by an op that does not write its output.
  void mark_blank(const at::Tensor& o, Slot& s) {
    if (s.key == 0 || s.gen < 0 || !o.unsafeGetTensorImpl()->has_storage()) return;
    blank_[s.key] = Blank{s.gen, o.storage().getWeakStorageImpl()};
    auto m = made_.find(s.key);
    if (m != made_.end() && !m->second.empty() && m->second.back().value == s.value)
      m->second.back().gen = ~s.gen;  // an object never seen that views it is read afresh
    s.gen = ~s.gen;
  }

  // The value `t` holds if it is blank bytes no op wrote since an op allocated them; else -1.
  // Asked only when current() refused `t`.
  int64_t blank_value(const at::Tensor& t) {
    Slot* s = find(t.unsafeGetTensorImpl());
    if (s == nullptr || s->key == 0 || s->gen >= 0) return -1;
    int64_t gen = ~s->gen;
    auto g = gens_.find(s->key);
    int64_t now = g == gens_.end() ? 0 : g->second;
    return blank_gen(s->key) == gen && now == gen ? s->value : -1;
  }

  Slot& write(const at::Tensor& o, Slot* previous, int64_t op, int64_t op_slot, bool written,
              bool again, int32_t grad_of) {
    intptr_t key = storage_key(o);
    if (written && key != 0) {
      gens_[key] += 1;
      if (!blank_.empty()) blank_.erase(key);
    }
    int64_t version = 0;
    int8_t role = ACTIVATION;
    int32_t name = -1;
    if (previous != nullptr && again) {
      version = previous->version + (written ? 1 : 0);
      role = previous->role;
      name = previous->name;
    } else if (const Named* n = named(o.unsafeGetTensorImpl())) {
      role = n->role;
      name = n->name;
    } else if (grad_of >= 0) {
      role = GRADIENT;
      name = grad_of;
      named_[o.unsafeGetTensorImpl()] = Named{WeakImpl(o.getIntrusivePtr()), role, name};
    }
    Slot& slot = add(o, op, op_slot, version, role, name, key, previous);
    if (key != 0) {
      // Entries of a freed storage, or written over since, can match nothing again: dropped, so
      // an address the allocator hands out again and again keeps a short list.
      auto& made = made_[key];
      made.erase(std::remove_if(made.begin(), made.end(),
                                [&slot](const Made& m) {
                                  return m.gen != slot.gen || m.storage.expired();
                                }),
                 made.end());
      made.push_back(Made{slot.value, slot.gen, o.storage_offset(), layout_of(o),
                          static_cast<int8_t>(o.scalar_type()), o.storage().getWeakStorageImpl(),
                          o.storage().unsafeGetStorageImpl()});
    }
    return slot;
  }

  int64_t same_bytes(const at::Tensor& o, const std::vector<ArgTensor>& inputs) {
    const void* ptr = o.data_ptr();
    for (const auto& a : inputs) {
      const auto& t = a.t;
      if (t.unsafeGetTensorImpl()->has_storage() && t.data_ptr() == ptr && t.scalar_type() == o.scalar_type() && t.numel() == o.numel() &&
          t.is_contiguous() && o.is_contiguous()) {
        if (Slot* s = find(t.unsafeGetTensorImpl())) return s->value;
      }
    }
    return -1;
  }

  // `source`: the value entered the step from outside (op is its first reader).
  bool selected(int8_t role, int32_t module, int32_t op, bool source = false) {
    int64_t key = (static_cast<int64_t>(role) << 56) ^ (static_cast<int64_t>(source) << 55) ^
                  (static_cast<int64_t>(module) << 28) ^ op;
    auto it = selected_.find(key);
    if (it != selected_.end()) return it->second;
    bool yes = false;
    try {
      py::gil_scoped_acquire gil;
      yes = select_cb(role, strings_[module], strings_[op], source).cast<bool>();
    } catch (py::error_already_set& e) {
      throw_python(e);
    }
    selected_.emplace(key, yes);
    return yes;
  }

  // capture.StepCapture._observe
  void observe(int64_t index, const at::Tensor& t, int32_t module, int32_t op, int64_t same) {
    if (stats) {
      if (same >= 0 && measured_[same]) {
        d.aliases.emplace_back(index, same);
      } else {
        add_stats(index, t);
      }
      measured_[index] = 1;
    }
    if (!values) return;
    int8_t role = d.role[index];
    bool yes = selected(role, module, op, d.producer[index] < 0);
    if (!yes && (role == ACTIVATION || role == INPUT) && fresh_state &&
        selected(OPTIMIZER_STATE, module, op)) {
      yes = true;
      d.tentative.emplace_back(index, module, op);
    }
    if (yes) {
      d.values.emplace_back(index, t.detach().clone(at::MemoryFormat::Contiguous));
    }
  }

  // stats.cpu.StatsCollector.add, for what the one-pass kernel finishes alone; the rest goes
  // to the Python collector, which computes exactly what it computes for the Python engine.
  void add_stats(int64_t index, const at::Tensor& t) {
    if (t.layout() != at::kStrided || t.device().is_meta()) return;
    auto st = t.scalar_type();
    int64_t n = t.numel();
    if (n == 0 && t.device().is_cpu()) {  // no values: the fingerprint of no bytes, 0
      push_row(index, 0, {0, 0, 0, 0, 0}, {0, 0, 0, 0}, true);
      return;
    }
    if (fused != nullptr && hist_bins == 0 && n > 0 && t.device().is_cpu() &&
        (st == at::kFloat || st == at::kBFloat16)) {
      at::Tensor x = t.is_contiguous() ? t : t.contiguous();
      FusedRow r{};
      // One thread: the kernel runs at memory speed on one core, and an OpenMP region of its
      // own, entered between torch's, left the next ops waiting up to 30 ms for their workers
      // (measured on the demo with 2 torch threads).
      if (fused(x.data_ptr(), n, st == at::kBFloat16 ? 1 : 0, 1, &r) == 0 &&
          accept(index, x, n, r))
        return;
    }
    try {
      py::gil_scoped_acquire gil;
      observe_cb(index, t);
    } catch (py::error_already_set& e) {
      throw_python(e);
    }
  }

  // A Python error as a plain C++ one (its message read while the GIL is held).
  // A Python error as a plain C++ one (its message read while the GIL is held), so it becomes
  // a recorder_error event; but KeyboardInterrupt, SystemExit and other BaseExceptions that
  // are not Exceptions go on up to the training loop, as they would without the recorder.
  [[noreturn]] static void throw_python(py::error_already_set& e) {
    std::string what;
    {
      py::gil_scoped_acquire gil;
      if (!e.matches(PyExc_Exception)) throw;
      what = e.what();
    }
    throw std::runtime_error(what);
  }

  // stats.cpu.StatsCollector._add_fused but for its rarest cases (a -0.0 at the min or max,
  // overflowing sums, no finite value): false sends the tensor to Python.
  bool accept(int64_t index, const at::Tensor& x, int64_t n, const FusedRow& r) {
    int64_t m = n - r.nan - r.inf;
    if (m == 0 || !std::isfinite(r.sum) || !std::isfinite(r.sumsq)) return false;
    if (r.negzero && (r.min == 0 || r.max == 0)) return false;
    double std_ = -1.0;
    if (m > 1 && r.sumsq > 0 && r.sumsq - r.sum * r.sum / m <= CANCEL * r.sumsq) {
      // The mean dominates the spread, so sumsq - sum^2/m would cancel: a second pass over the
      // values, centred in float64 (every element is finite here: m == n).
      if (m < n) return false;
      std_ = std::sqrt(centred_squares(x, r.sum / m) / static_cast<double>(m));
    }
    push_row(index, n, {r.min, r.max, r.sum, std::sqrt(r.sumsq), std_},
             {r.nonzero, r.nan, r.inf, static_cast<int64_t>(r.fingerprint)}, false);
    return true;
  }

  void push_row(int64_t index, int64_t n, std::initializer_list<double> floats,
                std::initializer_list<int64_t> ints, bool fingerprint_only) {
    d.stat_index.push_back(index);
    d.stat_numel.push_back(n);
    d.stat_floats.insert(d.stat_floats.end(), floats);
    d.stat_ints.insert(d.stat_ints.end(), ints);
    d.stat_fingerprint_only.push_back(fingerprint_only ? 1 : 0);
  }

  // Sum of (x - mean)^2 over a contiguous float32 or bfloat16 tensor, accumulated in float64.
  static double centred_squares(const at::Tensor& x, double mean) {
    int64_t n = x.numel();
    double acc = 0;
    if (x.scalar_type() == at::kFloat) {
      const float* p = x.const_data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) {
        double v = static_cast<double>(p[i]) - mean;
        acc += v * v;
      }
    } else {
      const uint16_t* p = static_cast<const uint16_t*>(x.const_data_ptr());
      for (int64_t i = 0; i < n; ++i) {
        uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
        float f;
        std::memcpy(&f, &bits, sizeof f);
        double v = static_cast<double>(f) - mean;
        acc += v * v;
      }
    }
    return acc;
  }

  int32_t backward_module(const torch::autograd::Node& node) {
    uint64_t seq = node.sequence_nr();
    if (seq == ACCUMULATE_GRAD_SEQ) {
      int32_t param = accumulate_grad_param(node);
      if (param < 0) return 0;
      const std::string& name = strings_[param];
      auto dot = name.rfind('.');
      return dot == std::string::npos ? 0 : intern(name.substr(0, dot));
    }
    auto it = std::upper_bound(bound_seq.begin(), bound_seq.end(), seq);
    if (it == bound_seq.begin()) return 0;
    return bound_path[(it - bound_seq.begin()) - 1];
  }

  int32_t accumulate_grad_param(const torch::autograd::Node& node) {
    auto* acc = dynamic_cast<const torch::autograd::AccumulateGrad*>(&node);
    if (acc == nullptr || !acc->variable.defined()) return -1;
    const Named* n = named(acc->variable.unsafeGetTensorImpl());
    return n != nullptr && n->role == PARAMETER ? n->name : -1;
  }

  void collect(const OpMeta& m, const c10::FunctionSchema& schema, size_t pos,
               const c10::IValue& v, Pending& p) {
    if (v.isTensor()) {
      const auto& t = v.toTensor();
      if (t.defined() && t.unsafeGetTensorImpl()->is_wrapped_number()) {
        // a Python number torch wrapped in a 0-d tensor: the dispatch mode is given the number
        p.attrs.push_back(Attr{arg_string(m, pos), Kind::Plain, c10::IValue(t.item())});
      } else if (t.defined()) {
        p.tensors.push_back({v.toTensor(), static_cast<int32_t>(pos), -1});
      } else {  // the dispatch mode is given None
        p.attrs.push_back(Attr{arg_string(m, pos), Kind::Plain, c10::IValue()});
      }
      return;
    }
    if (v.isList() && !v.toListRef().empty()) {
      // c10d's Tensor[][]: the tensors numbered in flat order (recorder.convert.collect_arg)
      auto outer = v.toListRef();
      bool nested = true, any = false;
      for (const auto& x : outer) nested = nested && x.isList();
      if (nested) {
        int32_t item = 0;
        for (const auto& inner : outer)
          for (const auto& x : inner.toListRef()) {
            if (x.isTensor() && x.toTensor().defined()) {
              any = true;
              p.tensors.push_back({x.toTensor(), static_cast<int32_t>(pos), item});
            }
            ++item;
          }
        if (any) return;
      }
    }
    if (v.isList()) {
      auto list = v.toListRef();
      bool any = false;
      for (const auto& x : list) any = any || (x.isTensor() && x.toTensor().defined());
      if (any) {
        int32_t item = 0;
        for (const auto& x : list) {
          if (x.isTensor() && x.toTensor().defined())
            p.tensors.push_back({x.toTensor(), static_cast<int32_t>(pos), item});
          ++item;
        }
        return;
      }
    }
    if (v.isObject() || v.isCapsule()) return;  // script objects: not attributes
    p.attrs.push_back(Attr{arg_string(m, pos), static_cast<Kind>(m.arg_kind[pos]), v});
  }

  void before(const OpMeta& m, const c10::OperatorHandle& op, torch::jit::Stack& st, Pending& p) {
    const auto& schema = op.schema();
    const auto& args = schema.arguments();
    size_t n = args.size();
    auto values_ = torch::jit::last(st, n);
    // Which arguments the Python dispatch mode would be given: trailing positional arguments
    // equal to their defaults, and keyword-only ones equal to their defaults, are dropped.
    size_t kw_start = n;
    while (kw_start > 0 && args[kw_start - 1].kwarg_only()) --kw_start;
    size_t pos_end = kw_start;
    while (pos_end > 0 && is_default(args[pos_end - 1], values_[pos_end - 1])) --pos_end;
    for (size_t i = 0; i < n; ++i) {
      if (i >= pos_end && i < kw_start) continue;
      if (i >= kw_start && is_default(args[i], values_[i])) continue;
      collect(m, schema, i, values_[i], p);
    }
    auto node = torch::autograd::get_current_node();
    int8_t phase;
    int32_t module = 0;
    if (node) {
      phase = BACKWARD;
      module = backward_module(*node);
    } else if (backward_depth) {
      phase = BACKWARD;
    } else if (!stack.empty()) {
      phase = FORWARD;
      module = stack.back();
    } else if (optimizer_depth) {
      phase = OPTIMIZER;
    } else {
      bool grad = false;
      if (c10::GradMode::is_enabled())
        for (const auto& a : p.tensors) grad = grad || a.t.requires_grad();
      phase = grad ? FORWARD : OTHER;
    }
    p.phase = phase;
    p.module = module;
    int32_t name = op_string(m);
    if (!later_.empty()) {
      // the program touches the storage of a running collective's values: it waited for them
      for (const auto& a : p.tensors) measure_later(storage_key(a.t), true);
    }
    for (const auto& a : p.tensors) {
      if (m.write_only[a.pos]) continue;
      int64_t v = current(a.t);
      if (v < 0) {
        if (!is_supported(a.t)) continue;
        // blank bytes the op writes, views or sizes up only: still the allocating op's value
        if (m.shape_only || m.overwrites[a.pos]) v = blank_value(a.t);
        if (v < 0) v = read(a.t, module, name);
      }
      p.inputs.insert(p.inputs.end(), {v, a.pos, a.item});
    }
    bool flag = m.written_if_flag >= 0 && static_cast<size_t>(m.written_if_flag) < n &&
                values_[m.written_if_flag].isBool() && values_[m.written_if_flag].toBool();
    for (const auto& a : p.tensors) {
      if (m.written[a.pos] || (flag && m.written_if_extra[a.pos])) p.written.push_back(a.t);
    }
    if (!m.comm && node && node->sequence_nr() == ACCUMULATE_GRAD_SEQ) {
      int32_t param = accumulate_grad_param(*node);
      if (param >= 0) p.grad_of = intern(strings_[param] + ".grad");
    }
  }

  // `written`: whether the values the op wrote are final now (see Written).
  void after(const OpMeta& m, const c10::OperatorHandle& op, torch::jit::Stack& st, Pending& p,
             int64_t elapsed, int64_t start, Written written, int64_t token) {
    auto op_index = static_cast<int64_t>(d.op_name.size());
    size_t n_ret = op.schema().returns().size();
    auto rets = torch::jit::last(st, n_ret);
    std::vector<std::pair<at::Tensor, bool>> returned;
    if (n_ret == 1) {
      const auto& r = rets[0];
      if (r.isTensor()) {
        if (r.toTensor().defined())
          returned.emplace_back(r.toTensor(), !m.view_returns.empty() && m.view_returns[0]);
      } else if (r.isList()) {
        size_t i = 0;
        for (const auto& x : r.toListRef()) {
          if (x.isTensor() && x.toTensor().defined())
            returned.emplace_back(x.toTensor(), m.view_of_return(i));
          ++i;
        }
      }
    } else {
      for (size_t i = 0; i < n_ret; ++i)
        if (rets[i].isTensor() && rets[i].toTensor().defined())
          returned.emplace_back(rets[i].toTensor(), m.view_of_return(i));
    }
    size_t n_returned = returned.size();
    for (const auto& w : p.written) {
      bool seen = false;
      for (size_t i = 0; i < n_returned; ++i)
        seen = seen || returned[i].first.unsafeGetTensorImpl() == w.unsafeGetTensorImpl();
      if (!seen) returned.emplace_back(w, false);
    }
    int64_t mem = fresh_bytes(p, returned);
    int32_t name = op_string(m);
    // A number handed back to Python (tensor.item()): kept as the attribute "returned"
    // (capture.py does the same), so a replay has something to compare it with; only when values
    // are recorded (without them there is nothing to replay it from, and a number that changes
    // every step, an optimizer's step count, would give the graph per-step overrides).
    if (values && n_ret == 1 && returned.empty() &&
        (rets[0].isDouble() || rets[0].isInt() || rets[0].isBool()))
      p.attrs.push_back(Attr{intern("returned"), Kind::Plain, rets[0]});
    // The op's row goes in whatever happens below: outputs already given to the table name
    // it as their producer.
    auto push_row = [&]() {
      d.op_name.push_back(name);
      d.op_phase.push_back(p.phase);
      d.op_module.push_back(p.module);
      d.inputs.insert(d.inputs.end(), p.inputs.begin(), p.inputs.end());
      d.input_end.push_back(static_cast<int64_t>(d.inputs.size()));
      d.output_end.push_back(static_cast<int64_t>(d.outputs.size()));
      d.attrs.push_back(std::move(p.attrs));
      d.host_ns.push_back(elapsed);
      d.start_ns.push_back(start);
      d.mem_bytes.push_back(mem);
    };
    try {
      outputs(m, p, returned, op_index, name, written, token);
    } catch (...) {
      push_row();
      throw;
    }
    push_row();
  }

  // The op's memory (recorder/capture.py's _held): the bytes of the storages its outputs
  // hold and none of its tensor arguments holds, each counted once.  A view, an in-place or an
  // out= op allocates nothing.
  static int64_t fresh_bytes(const Pending& p,
                             const std::vector<std::pair<at::Tensor, bool>>& returned) {
    int64_t total = 0;
    std::vector<intptr_t> held;  // the arguments' storages (once an output needs them), then
                                 // the outputs' counted ones
    bool filled = false;
    for (const auto& [o, is_view] : returned) {
      if (is_view) continue;
      auto* impl = o.unsafeGetTensorImpl();
      bool aliased = false;
      for (const auto& a : p.tensors) aliased = aliased || a.t.unsafeGetTensorImpl() == impl;
      if (aliased || !impl->has_storage()) continue;
      if (!filled) {
        for (const auto& a : p.tensors) held.push_back(storage_key(a.t));
        filled = true;
      }
      intptr_t key = storage_key(o);
      if (std::find(held.begin(), held.end(), key) != held.end()) continue;
      held.push_back(key);
      total += static_cast<int64_t>(impl->storage().nbytes());
    }
    return total;
  }

  void outputs(const OpMeta& m, Pending& p,
               const std::vector<std::pair<at::Tensor, bool>>& returned, int64_t op_index,
               int32_t name, Written written, int64_t token) {
    for (size_t slot_no = 0; slot_no < returned.size(); ++slot_no) {
      const at::Tensor& o = returned[slot_no].first;
      bool is_view = returned[slot_no].second;
      if (!is_supported(o)) continue;
      auto* impl = o.unsafeGetTensorImpl();
      Slot* previous = find(impl);
      bool is_written = false;
      for (const auto& w : p.written) is_written = is_written || w.unsafeGetTensorImpl() == impl;
      bool is_input = false;
      for (const auto& a : p.tensors) is_input = is_input || a.t.unsafeGetTensorImpl() == impl;
      bool again = previous != nullptr && (is_written || is_input);
      Slot& s = write(o, previous, op_index, static_cast<int64_t>(slot_no), is_written, again,
                      p.grad_of);
      int64_t value = s.value;
      intptr_t key = s.key;
      int8_t role = s.role;
      d.outputs.push_back(value);
      if (!again && m.uninitialized) mark_blank(o, s);  // its bytes: whatever memory held
      bool obs = again ? (is_written || views)
                       : ((!is_view || views || role != ACTIVATION) && !m.uninitialized);
      if (obs && written == Written::Later) {
        if (key != 0) later_[key].push_back(Later{value, o, p.module, name, token});
      } else if (obs && written == Written::Final) {
        int64_t same = -1;
        if (!is_written && key != 0 && o.numel() > small_numel) same = same_bytes(o, p.tensors);
        observe(value, o, p.module, name, same);
      }
    }
  }
};

Engine& engine() {
  static Engine* e = new Engine();  // never destroyed: the fallback may run during exit
  return *e;
}

void fallback(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  engine().run(op, ks, stack);
}

int code_of(const py::handle& dtype) {
  if (!THPDtype_Check(dtype.ptr())) throw py::type_error("expected a torch.dtype");
  return static_cast<int>(reinterpret_cast<THPDtype*>(dtype.ptr())->scalar_type);
}

py::object to_python(const Attr& a) {
  const auto& v = a.value;
  if (a.kind != Kind::Plain && v.isInt()) {
    auto i = v.toInt();
    switch (a.kind) {
      case Kind::ScalarType:
        return py::reinterpret_borrow<py::object>(
            reinterpret_cast<PyObject*>(torch::getTHPDtype(static_cast<c10::ScalarType>(i))));
      case Kind::Layout:
        return py::reinterpret_borrow<py::object>(
            reinterpret_cast<PyObject*>(torch::getTHPLayout(static_cast<c10::Layout>(i))));
      case Kind::MemoryFormat:
        return py::reinterpret_borrow<py::object>(
            torch::utils::getTHPMemoryFormat(static_cast<c10::MemoryFormat>(i)));
      default:
        break;
    }
  }
  return torch::jit::toPyObject(v);
}

// The step's rows as Python objects, built with the classes recorder.captured defines.
py::tuple rows(StepData& d, const py::object& op_row, const py::object& tensor_row,
               const py::list& phases, const py::list& roles, const py::object& json_value,
               const py::dict& dtypes) {
  py::object tuple_new = py::module_::import("builtins").attr("tuple").attr("__new__");
  std::vector<py::object> strs;
  strs.reserve(d.strings.size());
  for (const auto& s : d.strings) strs.push_back(py::str(s));
  std::unordered_map<int, py::object> dtype_objs;
  for (auto item : dtypes) dtype_objs[code_of(item.first)] = py::reinterpret_borrow<py::object>(item.second);
  py::list tensors, role_list, name_list;
  size_t at = 0;
  for (size_t i = 0; i < d.dtype.size(); ++i) {
    size_t nd = d.ndim[i];
    py::tuple shape(nd), strides(nd);
    for (size_t k = 0; k < nd; ++k) {
      shape[k] = py::int_(d.dims[at + k]);
      strides[k] = py::int_(d.dims[at + nd + k]);
    }
    at += 2 * nd;
    py::tuple fields = py::make_tuple(dtype_objs.at(d.dtype[i]), shape, strides, strs[d.device[i]],
                                      d.producer[i], d.producer_slot[i], d.version[i], d.offset[i]);
    tensors.append(tuple_new(tensor_row, fields));
    role_list.append(roles[d.role[i]]);
    name_list.append(d.name[i] < 0 ? py::none() : strs[d.name[i]]);
  }
  py::list ops;
  int64_t in_at = 0, out_at = 0;
  for (size_t i = 0; i < d.op_name.size(); ++i) {
    py::list inputs;
    for (; in_at < d.input_end[i]; in_at += 3)
      inputs.append(py::make_tuple(d.inputs[in_at], d.inputs[in_at + 1], d.inputs[in_at + 2]));
    py::list outputs;
    for (; out_at < d.output_end[i]; ++out_at) outputs.append(d.outputs[out_at]);
    py::object attrs = py::none();
    if (!d.attrs[i].empty()) {
      py::dict a;
      for (auto& attr : d.attrs[i]) a[strs[attr.name]] = json_value(to_python(attr));
      attrs = a;
    }
    py::tuple fields = py::make_tuple(strs[d.op_name[i]], phases[d.op_phase[i]],
                                      strs[d.op_module[i]], py::tuple(inputs), py::tuple(outputs),
                                      attrs, py::none());
    ops.append(tuple_new(op_row, fields));
  }
  return py::make_tuple(ops, tensors, role_list, name_list);
}

}  // namespace

TORCH_LIBRARY_IMPL(_, Fake, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&fallback>());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<StepData>(m, "StepData")
      .def("rows", &rows)
      .def_property_readonly("n_tensors", [](const StepData& d) { return d.dtype.size(); })
      .def_property_readonly("n_ops", [](const StepData& d) { return d.op_name.size(); })
      .def_property_readonly("host_ns", [](const StepData& d) { return d.host_ns; })
      .def_property_readonly("start_ns", [](const StepData& d) { return d.start_ns; })
      .def_property_readonly("mem_bytes", [](const StepData& d) { return d.mem_bytes; })
      .def_property_readonly("error", [](const StepData& d) { return d.error; })
      .def_property_readonly("error_op", [](const StepData& d) { return d.error_op; })
      .def_property_readonly("aliases", [](const StepData& d) { return d.aliases; })
      .def("role_of", [](const StepData& d, int64_t i) { return d.role.at(i); })
      .def("stats",
           [](const StepData& d) {
             auto k = static_cast<int64_t>(d.stat_index.size());
             auto i64 = at::TensorOptions().dtype(at::kLong);
             auto f64 = at::TensorOptions().dtype(at::kDouble);
             py::dict out;
             out["index"] = at::tensor(d.stat_index, i64);
             out["numel"] = at::tensor(d.stat_numel, i64);
             out["floats"] = at::tensor(d.stat_floats, f64).reshape({k, 5});
             out["ints"] = at::tensor(d.stat_ints, i64).reshape({k, 4});
             out["fingerprint_only"] = at::tensor(
                 std::vector<int64_t>(d.stat_fingerprint_only.begin(),
                                      d.stat_fingerprint_only.end()),
                 i64);
             return out;
           })
      .def("take_values",
           [](StepData& d) {
             py::dict out;
             for (auto& [i, t] : d.values) out[py::int_(i)] = t;
             d.values.clear();
             return out;
           })
      .def_property_readonly("tentative", [](const StepData& d) {
        py::list out;
        for (const auto& [i, module, op] : d.tentative)
          out.append(py::make_tuple(i, d.strings[module], d.strings[op]));
        return out;
      });

  m.def("configure", [](py::object describe, py::object observe, py::object select,
                        py::object comm_before, py::object comm_after, py::object later_done,
                        py::dict dtypes, uintptr_t fused) {
    auto& e = engine();
    e.describe_cb = std::move(describe);
    e.observe_cb = std::move(observe);
    e.select_cb = std::move(select);
    e.comm_before_cb = std::move(comm_before);
    e.comm_after_cb = std::move(comm_after);
    e.later_done_cb = std::move(later_done);
    std::fill(e.supported.begin(), e.supported.end(), 0);
    for (auto item : dtypes) {
      auto code = static_cast<size_t>(code_of(item.first));
      if (code < e.supported.size()) e.supported[code] = 1;
    }
    e.fused = reinterpret_cast<FusedFn>(fused);
  });
  m.def("start", [](bool stats, bool views, bool values, int64_t hist_bins, int64_t small_numel,
                    int64_t t0_ns) {
    auto& e = engine();
    if (e.active) throw std::runtime_error("the native capture is already active");
    e.stats = stats;
    e.views = views;
    e.values = values;
    e.hist_bins = hist_bins;
    e.small_numel = small_numel;
    e.start();
    e.t0 = t0_ns;
  });
  m.def("enable", [](bool on) { engine().enable(on); });
  m.attr("CANCEL") = CANCEL;
  m.def("finish", []() { return engine().finish(); });
  m.def("active", []() { return engine().active.load(); });
  m.def("included", []() { return c10::impl::tls_is_dispatch_key_included(kKey); });
  m.def("name", [](const at::Tensor& t, int role, const std::string& name) {
    engine().name(t, static_cast<int8_t>(role), name);
  });
  m.def("enter_module", [](const std::string& path) { engine().enter_module(path); });
  m.def("exit_module", []() { engine().exit_module(); });
  m.def("set_depths", [](int backward, int optimizer, bool fresh_state) {
    engine().set_depths(backward, optimizer, fresh_state);
  });
  m.def("role_of", [](int64_t i) { return engine().role_of(i); });
  m.def("measure_later", []() { engine().measure_all_later(); });
  m.def("clear_callbacks", []() {
    auto& e = engine();
    e.describe_cb = py::object();
    e.observe_cb = py::object();
    e.select_cb = py::object();
    e.comm_before_cb = py::object();
    e.comm_after_cb = py::object();
    e.later_done_cb = py::object();
  });
}
