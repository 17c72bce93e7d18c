// c10d's headers are compiled only with these (libtorch_cpu.so holds the symbols: the wheel is built with them).
#ifndef USE_DISTRIBUTED
#define USE_DISTRIBUTED 1
#endif
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif

#include "trainer/distributed.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <thread>

namespace fs = std::filesystem;

namespace bitforge {

#if defined(BITFORGE_WITH_NCCL)
// trainer/distributed_nccl.cpp (compiled when the CUDA build finds NCCL).
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                     std::chrono::milliseconds timeout);
#endif

namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

int env_int(const char* name, int fallback, int lo, int hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  if (errno || *end || x < lo || x > hi)
    throw DistributedError(fmt::format("environment variable {}={} is not an integer in [{}, {}]", name, v, lo, hi));
  return static_cast<int>(x);
}

std::string hostname() {
  char buf[256] = {0};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

/// True when `pid` is gone or a zombie (killed, not yet reaped by its launcher).
bool process_gone(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  if (!f) return true;
  std::string line;
  std::getline(f, line);
  const auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return true;
  const char state = line[close + 2];
  return state == 'Z' || state == 'X';
}

std::chrono::milliseconds to_ms(double s) {
  return std::chrono::milliseconds(static_cast<int64_t>(std::max(1.0, s * 1000.0)));
}

}  // namespace

DistributedEnv distributed_env() {
  DistributedEnv e;
  if (!std::getenv("WORLD_SIZE") || !*std::getenv("WORLD_SIZE")) return e;
  e.present = true;
  e.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  if (!std::getenv("RANK")) throw DistributedError("WORLD_SIZE is set but RANK is not (start the ranks with torchrun "
                                                   "or bitforge --nproc-per-node N)");
  e.rank = env_int("RANK", 0, 0, e.world_size - 1);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0, 1 << 20);
  e.master_addr = env_or("MASTER_ADDR", "127.0.0.1");
  e.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  e.agent_store = env_or("TORCHELASTIC_USE_AGENT_STORE", "") == "True";
  return e;
}

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  torch::Device device{torch::kCPU};
  std::vector<int> peer_pid;
  std::vector<std::string> peer_host;
  std::string my_host;

  void wait(const c10::intrusive_ptr<c10d::Work>& w) { w->wait(); }
};

namespace {
std::mutex g_mutex;
std::shared_ptr<Distributed> g_dist;
}  // namespace

Distributed::Distributed(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Distributed::~Distributed() = default;

std::shared_ptr<Distributed> Distributed::current() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_dist;
}

std::shared_ptr<Distributed> Distributed::get(const std::string& backend, double timeout_s,
                                              const torch::Device& device) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_dist) return g_dist;
  const DistributedEnv env = distributed_env();
  if (!env.present) return nullptr;
  const auto timeout = to_ms(timeout_s);
  std::string kind = backend;
  if (kind == "auto") kind = device.is_cuda() ? "nccl" : "gloo";
  if (kind == "nccl" && !device.is_cuda())
    throw DistributedError("train.distributed_backend: nccl needs train.device cuda (this rank runs on " +
                           device.str() + "); use gloo or auto");

  auto impl = std::make_unique<Impl>();
  impl->device = device;
  if (device.is_cuda() && torch::cuda::device_count() > 0)  // one GPU per local rank, as torchrun users expect
    impl->device = torch::Device(torch::kCUDA,
                                 static_cast<c10::DeviceIndex>(env.local_rank % torch::cuda::device_count()));
  impl->my_host = hostname();
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env.master_port);
  so.isServer = !env.agent_store && env.rank == 0;
  so.numWorkers = env.agent_store ? std::nullopt : std::optional<std::size_t>(env.world_size);
  so.waitWorkers = false;
  so.timeout = timeout;
  so.multiTenant = true;
  c10::intrusive_ptr<c10d::Store> tcp;
  try {
    tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    throw DistributedError(fmt::format(
        "rank {}: cannot reach the TCPStore at MASTER_ADDR={} MASTER_PORT={} within train.distributed_timeout_s={} "
        "({}): {}", env.rank, env.master_addr, env.master_port, timeout_s,
        so.isServer ? "hosting it" : "as a client", e.what()));
  }
  impl->store = c10::make_intrusive<c10d::PrefixStore>("bitforge", tcp);

  // Who is who: pid and host per rank, so a lost rank can be named after its process is gone.
  impl->store->set(fmt::format("peer/{}", env.rank), fmt::format("{} {}", ::getpid(), impl->my_host));
  impl->peer_pid.resize(env.world_size);
  impl->peer_host.resize(env.world_size);
  for (int r = 0; r < env.world_size; ++r) {
    std::vector<uint8_t> v;
    try {
      v = impl->store->get(fmt::format("peer/{}", r));
    } catch (const std::exception& e) {
      throw DistributedError(fmt::format("rank {}: rank {} did not join within train.distributed_timeout_s={} "
                                         "(WORLD_SIZE={} at MASTER_ADDR={}:{}): {}", env.rank, r, timeout_s,
                                         env.world_size, env.master_addr, env.master_port, e.what()));
    }
    std::string s(v.begin(), v.end());
    const auto sp = s.find(' ');
    impl->peer_pid[r] = std::atoi(s.substr(0, sp).c_str());
    impl->peer_host[r] = sp == std::string::npos ? "" : s.substr(sp + 1);
  }

  auto pg = c10::make_intrusive<c10d::ProcessGroup>(impl->store, env.rank, env.world_size);
  if (kind == "gloo") {
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    const std::string ifname = env_or("GLOO_SOCKET_IFNAME", "");
    if (!ifname.empty())
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost")
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("gloo", impl->store), env.rank, env.world_size, opts);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
  } else {
#if defined(BITFORGE_WITH_NCCL)
    auto nccl = make_nccl_backend(c10::make_intrusive<c10d::PrefixStore>("nccl", impl->store), env.rank,
                                  env.world_size, timeout);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
    pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
#else
    throw DistributedError("train.distributed_backend: nccl, but this build has no NCCL (configure with CUDA and "
                           "the nvidia-nccl headers); use gloo");
#endif
  }
  impl->pg = pg;
  auto d = std::make_shared<Distributed>(std::move(impl));
  d->rank_ = env.rank;
  d->world_ = env.world_size;
  d->backend_name_ = kind;
  d->timeout_s_ = timeout_s;
  if (env.rank != 0 && spdlog::get_level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
  spdlog::info("process group: rank {}/{} ({}, {} on {}, store {}:{}{}, timeout {} s)", env.rank, env.world_size,
               kind, d->impl_->device.str(), d->impl_->my_host, env.master_addr, env.master_port,
               env.agent_store ? " hosted by the launcher" : "", timeout_s);
  g_dist = d;
  return d;
}

torch::Device Distributed::device() const { return impl_->device; }

void Distributed::broadcast(std::vector<torch::Tensor> tensors) {
  for (auto& t : tensors) {
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions o;
    o.rootRank = 0;
    impl_->wait(impl_->pg->broadcast(v, o));
  }
}

void Distributed::all_reduce_sum(torch::Tensor& t) {
  std::vector<at::Tensor> v{t};
  impl_->wait(impl_->pg->allreduce(v));
}

std::vector<double> Distributed::all_reduce_mean(const std::vector<double>& values) {
  if (values.empty()) return {};
  auto t = torch::tensor(values, torch::kDouble).to(impl_->device);
  all_reduce_sum(t);
  t = (t / static_cast<double>(world_)).to(torch::kCPU);
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

void Distributed::all_gather(std::vector<torch::Tensor>& out, torch::Tensor in) {
  std::vector<std::vector<at::Tensor>> o{std::vector<at::Tensor>(out.begin(), out.end())};
  std::vector<at::Tensor> i{in};
  impl_->wait(impl_->pg->allgather(o, i));
  for (size_t r = 0; r < out.size(); ++r)
    if (!o[0][r].is_same(out[r])) out[r].copy_(o[0][r]);
}

void Distributed::barrier() { impl_->wait(impl_->pg->barrier()); }

double Distributed::time_all_reduce(int64_t numel, int reps) {
  auto t = torch::ones({numel}, torch::TensorOptions().dtype(torch::kFloat).device(impl_->device));
  barrier();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) all_reduce_sum(t);
  if (impl_->device.is_cuda()) torch::cuda::synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / std::max(1, reps);
}

void Distributed::rethrow_naming_peers(const std::exception& e, const std::string& where) const {
  std::string what = e.what();
  if (auto nl = what.find("\nException raised from"); nl != std::string::npos) what.resize(nl);
  // A peer killed a moment ago may still be exiting: look for up to 2 s.
  std::vector<int> lost;
  for (int attempt = 0; attempt < 20 && lost.empty(); ++attempt) {
    for (int r = 0; r < world_; ++r)
      if (r != rank_ && impl_->peer_host[r] == impl_->my_host && process_gone(impl_->peer_pid[r])) lost.push_back(r);
    if (lost.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!lost.empty()) {
    std::string names;
    for (int r : lost) names += fmt::format("{}rank {} (pid {} on {})", names.empty() ? "" : ", ", r,
                                            impl_->peer_pid[r], impl_->peer_host[r]);
    throw DistributedError(fmt::format("rank {}: lost {} during {}: the process is gone; stopping ({} backend: {})",
                                       rank_, names, where, backend_name_, what));
  }
  std::string lower = what;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  const bool timed_out = lower.find("timed out") != std::string::npos || lower.find("timeout") != std::string::npos;
  const bool comm = timed_out || lower.find("connection") != std::string::npos ||
                    lower.find("gloo") != std::string::npos || lower.find("nccl") != std::string::npos ||
                    lower.find("socket") != std::string::npos || lower.find("peer") != std::string::npos;
  if (!comm) throw;  // not a communication failure: the original exception
  std::string others;
  for (int r = 0; r < world_; ++r)
    if (r != rank_)
      others += fmt::format("{}rank {} (pid {} on {})", others.empty() ? "" : ", ", r, impl_->peer_pid[r],
                            impl_->peer_host[r]);
  throw DistributedError(fmt::format(
      "rank {}: {} during {}: {} did not answer{}; stopping ({} backend: {})", rank_,
      timed_out ? fmt::format("a collective timed out after train.distributed_timeout_s={}", timeout_s_)
                : std::string("a collective failed"),
      where, others, timed_out ? " (hung or dead on another host)" : "", backend_name_, what));
}

namespace {

class ReducerSync : public Distributed::GradSync {
 public:
  explicit ReducerSync(std::shared_ptr<c10d::Reducer> r) : reducer_(std::move(r)) {}
  void arm() override {
    // As DDP's forward: after the first synchronised backward, buckets are rebuilt once in the order gradients
    // became ready (rank 0's order, broadcast), then the next backward is expected to all-reduce.
    reducer_->rebuild_buckets();
    reducer_->prepare_for_forward();  // runtime-stats bookkeeping, as DDP's forward
    reducer_->prepare_for_backward({});
  }

 private:
  std::shared_ptr<c10d::Reducer> reducer_;
};

}  // namespace

std::unique_ptr<Distributed::GradSync> Distributed::make_grad_sync(const std::vector<torch::Tensor>& params,
                                                                   const std::vector<std::string>& names,
                                                                   int64_t bucket_mb) {
  const size_t cap = static_cast<size_t>(bucket_mb) * 1024 * 1024, first_cap = 1024 * 1024;
  std::vector<bool> sparse(params.size(), false);
  auto [buckets, limits] = c10d::compute_bucket_assignment_by_size(params, {first_cap, cap}, sparse);
  // Gradients become ready in roughly reverse order of definition: the last bucket goes first (as DDP).
  std::reverse(buckets.begin(), buckets.end());
  std::reverse(limits.begin(), limits.end());
  std::unordered_map<size_t, std::string> pn;
  for (size_t i = 0; i < names.size(); ++i) pn[i] = names[i];
  std::vector<int64_t> cap_list(limits.begin(), limits.end());
  auto reducer = std::make_shared<c10d::Reducer>(params, buckets, impl_->pg, sparse, static_cast<int64_t>(cap),
                                                 /*find_unused_parameters=*/false,
                                                 /*gradient_as_bucket_view=*/false, pn,
                                                 static_cast<int64_t>(first_cap),
                                                 /*skip_all_reduce_unused_params=*/false,
                                                 /*use_python_reducer=*/false, cap_list);
  spdlog::debug("gradient all-reduce: {} buckets of <= {} MiB over {} tensors", buckets.size(), bucket_mb,
                params.size());
  return std::make_unique<ReducerSync>(std::move(reducer));
}

// ---------------------------------------------------------------------------------------------------------
// Local launcher
// ---------------------------------------------------------------------------------------------------------

int launch_local_ranks(int nproc, const std::vector<std::string>& args, double timeout_s) {
  if (nproc < 1) throw DistributedError(fmt::format("--nproc-per-node {} must be >= 1", nproc));
  if (std::getenv("RANK") && std::getenv("WORLD_SIZE"))
    throw DistributedError("--nproc-per-node inside a launched rank (RANK and WORLD_SIZE are already set): use "
                           "either torchrun or --nproc-per-node");
  c10d::TCPStoreOptions so;
  so.port = 0;  // a free port, chosen by the store's server
  so.isServer = true;
  so.waitWorkers = false;
  so.timeout = to_ms(timeout_s);
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", so);
  const int port = store->getPort();
  const std::string exe = fs::read_symlink("/proc/self/exe").string();

  std::vector<pid_t> pids(nproc, -1);
  for (int r = 0; r < nproc; ++r) {
    // Everything the child needs is built before fork(): it only execs.
    std::vector<std::string> env_s;
    for (char** e = environ; *e; ++e) {
      const std::string kv = *e;
      static const char* ours[] = {"RANK=", "LOCAL_RANK=", "WORLD_SIZE=", "LOCAL_WORLD_SIZE=", "MASTER_ADDR=",
                                   "MASTER_PORT=", "TORCHELASTIC_USE_AGENT_STORE=", "GROUP_RANK="};
      bool skip = false;
      for (auto* o : ours) skip |= kv.rfind(o, 0) == 0;
      if (!skip) env_s.push_back(kv);
    }
    for (auto& kv : {fmt::format("RANK={}", r), fmt::format("LOCAL_RANK={}", r), fmt::format("WORLD_SIZE={}", nproc),
                     fmt::format("LOCAL_WORLD_SIZE={}", nproc), std::string("GROUP_RANK=0"),
                     std::string("MASTER_ADDR=127.0.0.1"), fmt::format("MASTER_PORT={}", port),
                     std::string("TORCHELASTIC_USE_AGENT_STORE=True")})
      env_s.push_back(kv);
    std::vector<char*> envp, argv;
    for (auto& s : env_s) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args_s = args;
    argv.push_back(const_cast<char*>(exe.c_str()));
    for (auto& s : args_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw DistributedError(fmt::format("--nproc-per-node: fork failed: {}", std::strerror(errno)));
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // the launcher dies → its ranks stop
      if (::getppid() != parent) ::_exit(1);
      ::execve(exe.c_str(), argv.data(), envp.data());
      ::_exit(127);
    }
    pids[r] = pid;
    spdlog::info("launcher: rank {} is pid {} (store 127.0.0.1:{})", r, pid, port);
  }

  int first_failure = 0, alive = nproc;
  std::optional<std::chrono::steady_clock::time_point> deadline;
  bool termed = false;
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      const auto it = std::find(pids.begin(), pids.end(), pid);
      if (it == pids.end()) continue;
      const int r = static_cast<int>(it - pids.begin());
      *it = -1;
      --alive;
      int code = 0;
      std::string how;
      if (WIFEXITED(status)) {
        code = WEXITSTATUS(status);
        how = fmt::format("exited with code {}", code);
      } else if (WIFSIGNALED(status)) {
        code = 128 + WTERMSIG(status);
        how = fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
      }
      if (code != 0) {
        if (!termed) spdlog::error("launcher: rank {} (pid {}) {}", r, pid, how);
        if (first_failure == 0) {
          first_failure = code;
          deadline = std::chrono::steady_clock::now() + to_ms(timeout_s + 10);
        }
      }
      continue;
    }
    if (deadline && std::chrono::steady_clock::now() > *deadline) {
      for (int r = 0; r < nproc; ++r)
        if (pids[r] > 0) {
          spdlog::error("launcher: rank {} (pid {}) still running {} s after a rank failed (train.distributed_timeout_s "
                        "= {}); terminating it", r, pids[r], timeout_s + 10, timeout_s);
          ::kill(pids[r], termed ? SIGKILL : SIGTERM);
        }
      termed = true;
      deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return first_failure;
}

}  // namespace bitforge
