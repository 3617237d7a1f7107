// ontop's native addon: thin wrappers over mount(2), umount2(2), flock(2),
// the new mount API (fsopen(2) and friends), btrfs's subvolume and quota
// ioctls, the resolution of a directory to a descriptor (openat2(2) and
// friends), and the file calls that reading and writing layers need (the
// l*xattr(2) calls, mknod(2), utimensat(2), syncfs(2)), and glibc's
// malloc_trim(3), the one libc call here (lib/heap.ts says why).
//
// Policy, paths and error formatting live in lib/native.ts. This file only
// moves arguments to syscalls off the JavaScript thread and hands back
// {errno, syscall} on failure. No mutable statics: per-env state is instance
// data, and every call owns the rest.
//
// A hung filesystem (a dead NFS server, a FUSE daemon that never answers)
// makes mount, umount2 and openDir wait in the kernel for as long as it
// stays hung. So none of them runs on libuv's pool (four threads, shared with
// every fs.promises call): they run on the addon's own pool, which starts a
// thread whenever none is idle, so a hung call waits on a thread of its own
// until the filesystem answers or its connection is aborted. At most
// kThreadLimit calls (waiting flocks included) are in flight per env; beyond
// that a call rejects at once with EAGAIN instead of waiting or spawning.
// Idle threads are reused (cheaper per call than a thread each) and exit
// after kIdle.
#include <napi.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <malloc.h>
#include <linux/btrfs.h>
#include <linux/openat2.h>
#include <sys/ioctl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

namespace {

constexpr int kThreadLimit = 64;
constexpr std::chrono::seconds kIdle{10};

// {errno, syscall}, for JS to turn into a Node-style error (lib/native.ts).
Napi::Value ErrorInfo(Napi::Env env, int err, const char* syscall) {
  Napi::Object info = Napi::Object::New(env);
  info.Set("errno", Napi::Number::New(env, err));
  info.Set("syscall", Napi::String::New(env, syscall));
  return info;
}

template <typename F>
long Retry(F call) {
  long rc;
  do {
    rc = call();
  } while (rc == -1 && errno == EINTR);
  return rc;
}

// One call: Run does the syscalls on a pool thread, Settle settles the
// promise on the JavaScript thread. A call dropped unsettled (the env went
// away) releases what it holds in its destructor.
class Call {
 public:
  Call(Napi::Env env, const char* syscall) : deferred_(Napi::Promise::Deferred::New(env)), syscall_(syscall) {}
  virtual ~Call() = default;
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  Napi::Promise Promise() const { return deferred_.Promise(); }
  virtual void Run() = 0;
  virtual void Settle(Napi::Env env) {
    if (errno_ == 0) {
      deferred_.Resolve(env.Undefined());
    } else {
      Reject(env, errno_, syscall_);
    }
  }
  void Reject(Napi::Env env, int err, const char* syscall) { deferred_.Reject(ErrorInfo(env, err, syscall)); }

 protected:
  // Records the errno of the failed step; false, for `return Fail(...)`.
  bool Fail(const char* syscall) {
    errno_ = errno;
    syscall_ = syscall;
    return false;
  }
  Napi::Promise::Deferred deferred_;
  const char* syscall_;
  int errno_ = 0;
};

void Deliver(Napi::Env env, Napi::Function, void*, Call* call);
using Tsfn = Napi::TypedThreadSafeFunction<void, Call, Deliver>;

// What pool threads share with the env; it outlives the env, since a thread
// hung in the kernel may return after the env is gone.
struct Threads {
  std::atomic<int> running{0};  // calls queued or running, for the bound
  std::mutex mutex;
  bool closed = false;  // under mutex: the env is going away, tsfn is no longer usable
  Tsfn tsfn;
  std::condition_variable wake;  // the rest under mutex
  std::deque<Call*> queue;       // calls handed to idle threads
  int idle = 0;
};

// Instance data, touched on the JavaScript thread only.
struct Instance {
  std::shared_ptr<Threads> threads = std::make_shared<Threads>();
  // Calls not yet delivered; the tsfn keeps the event loop alive while any is.
  int undelivered = 0;
};

void Deliver(Napi::Env env, Napi::Function, void*, Call* call) {
  std::unique_ptr<Call> owned(call);
  if (env == nullptr) return;  // the tsfn is being torn down
  owned->Settle(env);
  Instance* instance = env.GetInstanceData<Instance>();
  if (--instance->undelivered == 0) instance->threads->tsfn.Unref(env);
}

// A pool thread: runs its first call, then whatever is queued, and exits
// after kIdle without work or when the env goes away.
void Body(std::shared_ptr<Threads> threads, Call* call) {
  std::unique_lock<std::mutex> lock(threads->mutex, std::defer_lock);
  for (;;) {
    call->Run();
    lock.lock();
    threads->running.fetch_sub(1);
    // The queue is unbounded, so BlockingCall never waits.
    if (threads->closed || threads->tsfn.BlockingCall(call) != napi_ok) delete call;
    threads->idle++;
    threads->wake.wait_for(lock, kIdle, [&] { return threads->closed || !threads->queue.empty(); });
    threads->idle--;
    if (threads->closed) {
      for (Call* dropped : threads->queue) delete dropped;
      threads->queue.clear();
    }
    if (threads->queue.empty()) return;
    call = threads->queue.front();
    threads->queue.pop_front();
    lock.unlock();
  }
}

// Hands `call` to an idle pool thread or a new one, or rejects at once with
// EAGAIN (bound reached) or the errno of a failed thread creation.
Napi::Value Start(Napi::Env env, std::unique_ptr<Call> call, const char* syscall) {
  Napi::Promise promise = call->Promise();
  Instance* instance = env.GetInstanceData<Instance>();
  Threads& threads = *instance->threads;
  if (threads.running.fetch_add(1) >= kThreadLimit) {
    threads.running.fetch_sub(1);
    call->Reject(env, EAGAIN, syscall);
    return promise;
  }
  {
    std::lock_guard<std::mutex> lock(threads.mutex);
    if (threads.idle > static_cast<int>(threads.queue.size())) {
      threads.queue.push_back(call.release());
      threads.wake.notify_one();
    }
  }
  if (call) {
    int err = 0;
    try {
      std::thread(Body, instance->threads, call.get()).detach();
    } catch (const std::system_error& e) {
      err = e.code().value() != 0 ? e.code().value() : EAGAIN;
    } catch (const std::bad_alloc&) {
      err = ENOMEM;
    }
    if (err != 0) {
      threads.running.fetch_sub(1);
      call->Reject(env, err, syscall);
      return promise;
    }
    call.release();  // Body owns it now
  }
  if (instance->undelivered++ == 0) threads.tsfn.Ref(env);
  return promise;
}

class MountCall : public Call {
 public:
  MountCall(Napi::Env env, std::string source, std::string target, std::string fstype, unsigned long flags,
            std::string data)
      : Call(env, "mount"),
        source_(std::move(source)),
        target_(std::move(target)),
        fstype_(std::move(fstype)),
        flags_(flags),
        data_(std::move(data)) {}

  void Run() override {
    if (Retry([&] { return mount(source_.c_str(), target_.c_str(), fstype_.c_str(), flags_, data_.c_str()); }) == -1) {
      Fail("mount");
    }
  }

 private:
  std::string source_, target_, fstype_;
  unsigned long flags_;
  std::string data_;
};

class Umount2Call : public Call {
 public:
  Umount2Call(Napi::Env env, std::string target, int flags)
      : Call(env, "umount2"), target_(std::move(target)), flags_(flags) {}

  void Run() override {
    if (Retry([&] { return umount2(target_.c_str(), flags_); }) == -1) Fail("umount2");
  }

 private:
  std::string target_;
  int flags_;
};

class FlockCall : public Call {
 public:
  FlockCall(Napi::Env env, int fd, int operation) : Call(env, "flock"), fd_(fd), operation_(operation) {}

  void Run() override {
    if (Retry([&] { return flock(fd_, operation_); }) == -1) Fail("flock");
  }

 private:
  int fd_, operation_;
};

// Resolves `path` inside `root` to an O_PATH descriptor, then describes that
// descriptor: fstat, fstatfs, its path in this process's view, and the
// {dev, ino} of every ancestor up to the process root, nearest first.
class OpenDirCall : public Call {
 public:
  OpenDirCall(Napi::Env env, std::string root, std::string path)
      : Call(env, "openDir"), root_(std::move(root)), path_(std::move(path)) {}
  ~OpenDirCall() override {
    if (fd_ != -1) close(fd_);
  }

  void Run() override {
    if (!Resolve() && fd_ != -1) {
      close(fd_);
      fd_ = -1;
    }
  }

  void Settle(Napi::Env env) override {
    if (errno_ != 0) {
      Call::Settle(env);
      return;
    }
    Napi::Object info = Napi::Object::New(env);
    info.Set("fd", Napi::Number::New(env, fd_));
    info.Set("dev", Napi::Number::New(env, static_cast<double>(stat_.st_dev)));
    info.Set("ino", Napi::Number::New(env, static_cast<double>(stat_.st_ino)));
    info.Set("mode", Napi::Number::New(env, stat_.st_mode));
    info.Set("uid", Napi::Number::New(env, stat_.st_uid));
    info.Set("gid", Napi::Number::New(env, stat_.st_gid));
    info.Set("fsType", Napi::Number::New(env, static_cast<double>(statfs_.f_type)));
    info.Set("path", Napi::String::New(env, real_));
    Napi::Array ancestors = Napi::Array::New(env, ancestors_.size());
    for (size_t i = 0; i < ancestors_.size(); i++) {
      Napi::Object a = Napi::Object::New(env);
      a.Set("dev", Napi::Number::New(env, static_cast<double>(ancestors_[i].first)));
      a.Set("ino", Napi::Number::New(env, static_cast<double>(ancestors_[i].second)));
      ancestors.Set(static_cast<uint32_t>(i), a);
    }
    info.Set("ancestors", ancestors);
    fd_ = -1;  // the caller owns it now
    deferred_.Resolve(info);
  }

 private:
  static int OpenParent(int fd) {
    return static_cast<int>(Retry([&] { return openat(fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC); }));
  }

  bool Resolve() {
    int rootfd = static_cast<int>(Retry([&] { return open(root_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC); }));
    if (rootfd == -1) return Fail("open");
    struct open_how how = {};
    how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    fd_ = static_cast<int>(Retry([&] { return syscall(SYS_openat2, rootfd, path_.c_str(), &how, sizeof how); }));
    if (fd_ == -1) Fail("openat2");
    close(rootfd);
    if (fd_ == -1) return false;
    if (fstat(fd_, &stat_) == -1) return Fail("fstat");
    if (Retry([&] { return fstatfs(fd_, &statfs_); }) == -1) return Fail("fstatfs");
    if (!ReadLink()) return Fail("readlink");
    return Ancestors();
  }

  bool ReadLink() {
    char link[32];
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd_);
    std::string buf(4096, '\0');
    for (;;) {
      ssize_t n = readlink(link, buf.data(), buf.size());
      if (n == -1) return false;
      if (static_cast<size_t>(n) < buf.size()) {
        real_.assign(buf.data(), static_cast<size_t>(n));
        return true;
      }
      buf.resize(buf.size() * 2);
    }
  }

  // Walks ".." until it no longer moves: that is the process root.
  bool Ancestors() {
    int cur = fd_;
    struct stat cst = stat_;
    bool ok = false;
    for (;;) {
      int up = OpenParent(cur);
      if (up == -1) {
        Fail("openat");
        break;
      }
      struct stat ust;
      if (fstat(up, &ust) == -1) {
        Fail("fstat");
        close(up);
        break;
      }
      if (ust.st_dev == cst.st_dev && ust.st_ino == cst.st_ino) {
        close(up);
        ok = true;
        break;
      }
      ancestors_.emplace_back(ust.st_dev, ust.st_ino);
      if (cur != fd_) close(cur);
      cur = up;
      cst = ust;
    }
    if (cur != fd_) close(cur);
    return ok;
  }

  std::string root_, path_;
  int fd_ = -1;
  struct stat stat_ = {};
  struct statfs statfs_ = {};
  std::string real_;
  std::vector<std::pair<dev_t, ino_t>> ancestors_;
};

// A filesystem mounted through the new mount API (fsopen, fsconfig,
// fsmount, move_mount): each parameter is one fsconfig call, so no value is
// ever parsed out of an option string (an overlay's lowers go one
// `lowerdir+` each). `params` alternates key and value; an empty value sets
// a flag. On failure the rejection names the step, the key of a failed
// fsconfig, and the messages the filesystem left in the context's log.
class FsMountCall : public Call {
 public:
  FsMountCall(Napi::Env env, std::string fstype, std::string target, std::vector<std::string> params)
      : Call(env, "fsopen"), fstype_(std::move(fstype)), target_(std::move(target)), params_(std::move(params)) {}
  ~FsMountCall() override {
    if (fsfd_ != -1) close(fsfd_);
  }

  void Run() override {
    fsfd_ = static_cast<int>(Retry([&] { return fsopen(fstype_.c_str(), FSOPEN_CLOEXEC); }));
    if (fsfd_ == -1) {
      Fail("fsopen");
      return;
    }
    for (size_t i = 0; i + 1 < params_.size(); i += 2) {
      const std::string& key = params_[i];
      const std::string& value = params_[i + 1];
      long rc = value.empty() ? Retry([&] { return fsconfig(fsfd_, FSCONFIG_SET_FLAG, key.c_str(), nullptr, 0); })
                              : Retry([&] { return fsconfig(fsfd_, FSCONFIG_SET_STRING, key.c_str(), value.c_str(), 0); });
      if (rc == -1) {
        key_ = key;
        Failed("fsconfig");
        return;
      }
    }
    if (Retry([&] { return fsconfig(fsfd_, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0); }) == -1) {
      Failed("fsconfig");
      return;
    }
    int mfd = static_cast<int>(Retry([&] { return fsmount(fsfd_, FSMOUNT_CLOEXEC, 0); }));
    if (mfd == -1) {
      Failed("fsmount");
      return;
    }
    if (Retry([&] { return move_mount(mfd, "", AT_FDCWD, target_.c_str(), MOVE_MOUNT_F_EMPTY_PATH); }) == -1) {
      Fail("move_mount");
    }
    close(mfd);
  }

  void Settle(Napi::Env env) override {
    if (errno_ == 0) {
      deferred_.Resolve(env.Undefined());
      return;
    }
    Napi::Object info = ErrorInfo(env, errno_, syscall_).As<Napi::Object>();
    if (!key_.empty()) info.Set("key", Napi::String::New(env, key_));
    if (!log_.empty()) info.Set("log", Napi::String::New(env, log_));
    deferred_.Reject(info);
  }

 private:
  // Keeps errno, then drains the context's log ("e overlay: ..." lines).
  void Failed(const char* syscall) {
    Fail(syscall);
    char buf[512];
    for (;;) {
      ssize_t n = read(fsfd_, buf, sizeof buf - 1);
      if (n <= 0) break;
      if (!log_.empty()) log_ += "; ";
      log_.append(buf, static_cast<size_t>(n));
    }
  }

  std::string fstype_, target_;
  std::vector<std::string> params_;
  int fsfd_ = -1;
  std::string key_, log_;
};

// Opens `path` as a directory for an ioctl; -1 and errno on failure.
int OpenDirectory(const std::string& path) {
  return static_cast<int>(Retry([&] { return open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); }));
}

// Copies a subvolume name into an ioctl's fixed buffer; false (ENAMETOOLONG) rather than a truncated name.
template <size_t N>
bool CopyName(char (&dest)[N], const std::string& name) {
  if (name.size() >= N) {
    errno = ENAMETOOLONG;
    return false;
  }
  std::memcpy(dest, name.c_str(), name.size() + 1);
  return true;
}

// btrfs: makes the subvolume `name` in `parent` (BTRFS_IOC_SUBVOL_CREATE),
// or, with a `source`, a snapshot of that subvolume (BTRFS_IOC_SNAP_CREATE_V2).
class SubvolCreateCall : public Call {
 public:
  SubvolCreateCall(Napi::Env env, std::string parent, std::string name, std::string source)
      : Call(env, "ioctl"), parent_(std::move(parent)), name_(std::move(name)), source_(std::move(source)) {}

  void Run() override {
    int pfd = OpenDirectory(parent_);
    if (pfd == -1) {
      Fail("open");
      return;
    }
    if (source_.empty()) {
      struct btrfs_ioctl_vol_args args = {};
      if (!CopyName(args.name, name_) || Retry([&] { return ioctl(pfd, BTRFS_IOC_SUBVOL_CREATE, &args); }) == -1) {
        Fail("ioctl");
      }
    } else {
      int sfd = OpenDirectory(source_);
      if (sfd == -1) {
        Fail("open");
      } else {
        struct btrfs_ioctl_vol_args_v2 args = {};
        args.fd = sfd;
        if (!CopyName(args.name, name_) || Retry([&] { return ioctl(pfd, BTRFS_IOC_SNAP_CREATE_V2, &args); }) == -1) {
          Fail("ioctl");
        }
        close(sfd);
      }
    }
    close(pfd);
  }

 private:
  std::string parent_, name_, source_;
};

// btrfs: deletes the subvolume `name` in `parent` whole, however full
// (BTRFS_IOC_SNAP_DESTROY; the space is freed by the filesystem's cleaner).
class SubvolDestroyCall : public Call {
 public:
  SubvolDestroyCall(Napi::Env env, std::string parent, std::string name)
      : Call(env, "ioctl"), parent_(std::move(parent)), name_(std::move(name)) {}

  void Run() override {
    int pfd = OpenDirectory(parent_);
    if (pfd == -1) {
      Fail("open");
      return;
    }
    struct btrfs_ioctl_vol_args args = {};
    if (!CopyName(args.name, name_) || Retry([&] { return ioctl(pfd, BTRFS_IOC_SNAP_DESTROY, &args); }) == -1) {
      Fail("ioctl");
    }
    close(pfd);
  }

 private:
  std::string parent_, name_;
};

// btrfs: sets the referenced and exclusive limits of the quota group of the
// subvolume `path` (BTRFS_IOC_QGROUP_LIMIT, qgroupid 0 = that subvolume's).
// ENOTCONN when quotas are off.
class QgroupLimitCall : public Call {
 public:
  QgroupLimitCall(Napi::Env env, std::string path, uint64_t bytes)
      : Call(env, "ioctl"), path_(std::move(path)), bytes_(bytes) {}

  void Run() override {
    int fd = OpenDirectory(path_);
    if (fd == -1) {
      Fail("open");
      return;
    }
    struct btrfs_ioctl_qgroup_limit_args args = {};
    args.lim.flags = BTRFS_QGROUP_LIMIT_MAX_RFER | BTRFS_QGROUP_LIMIT_MAX_EXCL;
    args.lim.max_rfer = bytes_;
    args.lim.max_excl = bytes_;
    if (Retry([&] { return ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, &args); }) == -1) Fail("ioctl");
    close(fd);
  }

 private:
  std::string path_;
  uint64_t bytes_;
};

// btrfs: the filesystem's fsid (as /sys/fs/btrfs/ names it) and the id of
// the subvolume holding `path` (BTRFS_IOC_FS_INFO, BTRFS_IOC_INO_LOOKUP).
class BtrfsIdCall : public Call {
 public:
  BtrfsIdCall(Napi::Env env, std::string path) : Call(env, "ioctl"), path_(std::move(path)) {}

  void Run() override {
    int fd = OpenDirectory(path_);
    if (fd == -1) {
      Fail("open");
      return;
    }
    struct btrfs_ioctl_ino_lookup_args lookup = {};
    lookup.objectid = 256;  // BTRFS_FIRST_FREE_OBJECTID: a subvolume's root directory
    if (Retry([&] { return ioctl(fd, BTRFS_IOC_FS_INFO, &info_); }) == -1 ||
        Retry([&] { return ioctl(fd, BTRFS_IOC_INO_LOOKUP, &lookup); }) == -1) {
      Fail("ioctl");
    }
    subvol_ = lookup.treeid;
    close(fd);
  }

  void Settle(Napi::Env env) override {
    if (errno_ != 0) {
      Call::Settle(env);
      return;
    }
    char uuid[37];
    const unsigned char* f = info_.fsid;
    std::snprintf(uuid, sizeof uuid, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", f[0], f[1],
                  f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], f[13], f[14], f[15]);
    Napi::Object out = Napi::Object::New(env);
    out.Set("fsid", Napi::String::New(env, uuid));
    out.Set("subvolume", Napi::Number::New(env, static_cast<double>(subvol_)));
    deferred_.Resolve(out);
  }

 private:
  std::string path_;
  struct btrfs_ioctl_fs_info_args info_ = {};
  uint64_t subvol_ = 0;
};

// The JavaScript side checks types; these guards keep a misuse from crashing.
bool CheckArgs(const Napi::CallbackInfo& info, const char* shape) {
  for (size_t i = 0; shape[i] != '\0'; i++) {
    bool ok = shape[i] == 's' ? info[i].IsString() : info[i].IsNumber();
    if (!ok) {
      Napi::TypeError::New(info.Env(), "bad argument types").ThrowAsJavaScriptException();
      return false;
    }
  }
  return true;
}

Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, "sssns")) return env.Undefined();
  auto call = std::make_unique<MountCall>(env, info[0].As<Napi::String>(), info[1].As<Napi::String>(),
                                          info[2].As<Napi::String>(),
                                          static_cast<unsigned long>(info[3].As<Napi::Number>().Int64Value()),
                                          info[4].As<Napi::String>());
  return Start(env, std::move(call), "mount");
}

Napi::Value Umount2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, "sn")) return env.Undefined();
  auto call = std::make_unique<Umount2Call>(env, info[0].As<Napi::String>(), info[1].As<Napi::Number>().Int32Value());
  return Start(env, std::move(call), "umount2");
}

Napi::Value OpenDir(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, "ss")) return env.Undefined();
  auto call = std::make_unique<OpenDirCall>(env, info[0].As<Napi::String>(), info[1].As<Napi::String>());
  return Start(env, std::move(call), "openDir");
}

// flock(2). A non-blocking attempt runs inline (it never waits); only a wait
// takes a thread, since a lock may be held for as long as another process
// likes.
Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, "nn")) return env.Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int operation = info[1].As<Napi::Number>().Int32Value();
  auto call = std::make_unique<FlockCall>(env, fd, operation);
  if (Retry([&] { return flock(fd, operation | LOCK_NB); }) == 0) {
    Napi::Promise promise = call->Promise();
    call->Settle(env);
    return promise;
  }
  int err = errno;
  if ((operation & LOCK_NB) != 0 || err != EWOULDBLOCK) {
    Napi::Promise promise = call->Promise();
    call->Reject(env, err, "flock");
    return promise;
  }
  return Start(env, std::move(call), "flock");
}

// File calls for reading and writing layers (diff, commit, clone): extended
// attributes, special files, exact timestamps, syncfs. None follows a
// symlink in the last component except syncfs, which opens what it is given.
// Paths and xattr names arrive as raw bytes (a Buffer) or UTF-8 (a string),
// so names that are not UTF-8 pass through unchanged.

// The bytes of a string (UTF-8) or a Buffer (as they are).
std::string Bytes(const Napi::Value& v) {
  if (v.IsBuffer()) {
    Napi::Buffer<char> b = v.As<Napi::Buffer<char>>();
    return std::string(b.Data(), b.Length());
  }
  return v.As<Napi::String>().Utf8Value();
}

// Like CheckArgs, with 'p' for a string or a Buffer and 'b' for a Buffer.
bool CheckFileArgs(const Napi::CallbackInfo& info, const char* shape) {
  for (size_t i = 0; shape[i] != '\0'; i++) {
    bool ok = shape[i] == 'p'   ? info[i].IsString() || info[i].IsBuffer()
              : shape[i] == 'b' ? info[i].IsBuffer()
                                : info[i].IsNumber();
    if (!ok) {
      Napi::TypeError::New(info.Env(), "bad argument types").ThrowAsJavaScriptException();
      return false;
    }
  }
  return true;
}

// A call that hands back bytes (an xattr value, a list of names) as a Buffer.
class BytesCall : public Call {
 public:
  using Call::Call;
  void Settle(Napi::Env env) override {
    if (errno_ != 0) {
      Call::Settle(env);
      return;
    }
    deferred_.Resolve(Napi::Buffer<char>::Copy(env, value_.data(), value_.size()));
  }

 protected:
  // Sizes the buffer with a first call, then reads; again if it grew between.
  template <typename F>
  void ReadSized(F call, const char* syscall) {
    for (;;) {
      long n = Retry([&] { return call(nullptr, 0); });
      if (n == -1) {
        Fail(syscall);
        return;
      }
      value_.resize(static_cast<size_t>(n));
      // A size of 0 would make the second call a query again, not a read.
      if (n == 0) return;
      long m = Retry([&] { return call(value_.data(), value_.size()); });
      if (m == -1 && errno == ERANGE) continue;
      if (m == -1) {
        Fail(syscall);
        return;
      }
      value_.resize(static_cast<size_t>(m));
      return;
    }
  }
  std::string value_;
};

class LgetxattrCall : public BytesCall {
 public:
  LgetxattrCall(Napi::Env env, std::string path, std::string name)
      : BytesCall(env, "lgetxattr"), path_(std::move(path)), name_(std::move(name)) {}
  void Run() override {
    ReadSized([&](char* buf, size_t size) { return lgetxattr(path_.c_str(), name_.c_str(), buf, size); }, "lgetxattr");
  }

 private:
  std::string path_, name_;
};

class LlistxattrCall : public BytesCall {
 public:
  LlistxattrCall(Napi::Env env, std::string path) : BytesCall(env, "llistxattr"), path_(std::move(path)) {}
  void Run() override {
    ReadSized([&](char* buf, size_t size) { return llistxattr(path_.c_str(), buf, size); }, "llistxattr");
  }

 private:
  std::string path_;
};

class LsetxattrCall : public Call {
 public:
  LsetxattrCall(Napi::Env env, std::string path, std::string name, std::string value, int flags)
      : Call(env, "lsetxattr"), path_(std::move(path)), name_(std::move(name)), value_(std::move(value)), flags_(flags) {}
  void Run() override {
    if (Retry([&] { return lsetxattr(path_.c_str(), name_.c_str(), value_.data(), value_.size(), flags_); }) == -1) {
      Fail("lsetxattr");
    }
  }

 private:
  std::string path_, name_, value_;
  int flags_;
};

class LremovexattrCall : public Call {
 public:
  LremovexattrCall(Napi::Env env, std::string path, std::string name)
      : Call(env, "lremovexattr"), path_(std::move(path)), name_(std::move(name)) {}
  void Run() override {
    if (Retry([&] { return lremovexattr(path_.c_str(), name_.c_str()); }) == -1) Fail("lremovexattr");
  }

 private:
  std::string path_, name_;
};

class MknodCall : public Call {
 public:
  MknodCall(Napi::Env env, std::string path, mode_t mode, unsigned int major, unsigned int minor)
      : Call(env, "mknod"), path_(std::move(path)), mode_(mode), major_(major), minor_(minor) {}
  void Run() override {
    if (Retry([&] { return mknodat(AT_FDCWD, path_.c_str(), mode_, makedev(major_, minor_)); }) == -1) Fail("mknod");
  }

 private:
  std::string path_;
  mode_t mode_;
  unsigned int major_, minor_;
};

class UtimensatCall : public Call {
 public:
  UtimensatCall(Napi::Env env, std::string path, struct timespec atime, struct timespec mtime, int flags)
      : Call(env, "utimensat"), path_(std::move(path)), times_{atime, mtime}, flags_(flags) {}
  void Run() override {
    if (Retry([&] { return utimensat(AT_FDCWD, path_.c_str(), times_, flags_); }) == -1) Fail("utimensat");
  }

 private:
  std::string path_;
  struct timespec times_[2];
  int flags_;
};

// syncfs(2) needs an open file of the filesystem; O_NONBLOCK keeps a FIFO
// from waiting for a writer.
class SyncfsCall : public Call {
 public:
  SyncfsCall(Napi::Env env, std::string path) : Call(env, "syncfs"), path_(std::move(path)) {}
  void Run() override {
    int fd = static_cast<int>(
        Retry([&] { return open(path_.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC); }));
    if (fd == -1) {
      Fail("open");
      return;
    }
    if (Retry([&] { return syncfs(fd); }) == -1) Fail("syncfs");
    close(fd);
  }

 private:
  std::string path_;
};

Napi::Value Lgetxattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckFileArgs(info, "pp")) return env.Undefined();
  return Start(env, std::make_unique<LgetxattrCall>(env, Bytes(info[0]), Bytes(info[1])), "lgetxattr");
}

Napi::Value Llistxattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckFileArgs(info, "p")) return env.Undefined();
  return Start(env, std::make_unique<LlistxattrCall>(env, Bytes(info[0])), "llistxattr");
}

Napi::Value Lsetxattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckFileArgs(info, "ppbn")) return env.Undefined();
  auto call = std::make_unique<LsetxattrCall>(env, Bytes(info[0]), Bytes(info[1]), Bytes(info[2]),
                                              info[3].As<Napi::Number>().Int32Value());
  return Start(env, std::move(call), "lsetxattr");
}

Napi::Value Lremovexattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckFileArgs(info, "pp")) return env.Undefined();
  return Start(env, std::make_unique<LremovexattrCall>(env, Bytes(info[0]), Bytes(info[1])), "lremovexattr");
}

Napi::Value Mknod(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckFileArgs(info, "pnnn")) return env.Undefined();
  auto call = std::make_unique<MknodCall>(env, Bytes(info[0]), static_cast<mode_t>(info[1].As<Napi::Number>().Uint32Value()),
                                          info[2].As<Napi::Number>().Uint32Value(),
                                          info[3].As<Napi::Number>().Uint32Value());
  return Start(env, std::move(call), "mknod");
}

// Times arrive as seconds and nanoseconds, each a Number: seconds may be
// negative (before 1970), and a double holds every second a file can carry.
Napi::Value Utimensat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckFileArgs(info, "pnnnnn")) return env.Undefined();
  struct timespec atime = {};
  atime.tv_sec = static_cast<time_t>(info[1].As<Napi::Number>().Int64Value());
  atime.tv_nsec = static_cast<long>(info[2].As<Napi::Number>().Int64Value());
  struct timespec mtime = {};
  mtime.tv_sec = static_cast<time_t>(info[3].As<Napi::Number>().Int64Value());
  mtime.tv_nsec = static_cast<long>(info[4].As<Napi::Number>().Int64Value());
  auto call = std::make_unique<UtimensatCall>(env, Bytes(info[0]), atime, mtime, info[5].As<Napi::Number>().Int32Value());
  return Start(env, std::move(call), "utimensat");
}

Napi::Value Syncfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckFileArgs(info, "p")) return env.Undefined();
  return Start(env, std::make_unique<SyncfsCall>(env, Bytes(info[0])), "syncfs");
}

void InitFileCalls(Napi::Env env, Napi::Object exports, Napi::Object c) {
  exports.Set("lgetxattr", Napi::Function::New(env, Lgetxattr, "lgetxattr"));
  exports.Set("llistxattr", Napi::Function::New(env, Llistxattr, "llistxattr"));
  exports.Set("lsetxattr", Napi::Function::New(env, Lsetxattr, "lsetxattr"));
  exports.Set("lremovexattr", Napi::Function::New(env, Lremovexattr, "lremovexattr"));
  exports.Set("mknod", Napi::Function::New(env, Mknod, "mknod"));
  exports.Set("utimensat", Napi::Function::New(env, Utimensat, "utimensat"));
  exports.Set("syncfs", Napi::Function::New(env, Syncfs, "syncfs"));
  c.Set("AT_SYMLINK_NOFOLLOW", Napi::Number::New(env, AT_SYMLINK_NOFOLLOW));
  c.Set("XATTR_CREATE", Napi::Number::New(env, XATTR_CREATE));
  c.Set("XATTR_REPLACE", Napi::Number::New(env, XATTR_REPLACE));
}

Napi::Value FsMount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, "ss")) return env.Undefined();
  if (!info[2].IsArray()) {
    Napi::TypeError::New(env, "bad argument types").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array list = info[2].As<Napi::Array>();
  std::vector<std::string> params;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    if (!v.IsString()) {
      Napi::TypeError::New(env, "bad argument types").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    params.push_back(v.As<Napi::String>());
  }
  auto call = std::make_unique<FsMountCall>(env, info[0].As<Napi::String>(), info[1].As<Napi::String>(), std::move(params));
  return Start(env, std::move(call), "fsopen");
}

Napi::Value SubvolCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, "sss")) return env.Undefined();
  auto call = std::make_unique<SubvolCreateCall>(env, info[0].As<Napi::String>(), info[1].As<Napi::String>(),
                                                 info[2].As<Napi::String>());
  return Start(env, std::move(call), "ioctl");
}

Napi::Value SubvolDestroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, "ss")) return env.Undefined();
  auto call = std::make_unique<SubvolDestroyCall>(env, info[0].As<Napi::String>(), info[1].As<Napi::String>());
  return Start(env, std::move(call), "ioctl");
}

Napi::Value QgroupLimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, "sn")) return env.Undefined();
  auto call = std::make_unique<QgroupLimitCall>(env, info[0].As<Napi::String>(),
                                                static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value()));
  return Start(env, std::move(call), "ioctl");
}

Napi::Value BtrfsId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, "s")) return env.Undefined();
  auto call = std::make_unique<BtrfsIdCall>(env, info[0].As<Napi::String>());
  return Start(env, std::move(call), "ioctl");
}

// Gives the free pages of every malloc arena back to the kernel (madvise), the
// arenas of V8's compiler threads included, which glibc otherwise keeps. Not
// a syscall that waits on a device, so not taken off the JavaScript thread.
// Only glibc has it; elsewhere nothing is released.
Napi::Value MallocTrim(const Napi::CallbackInfo& info) {
#ifdef __GLIBC__
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* instance = new Instance();
  env.SetInstanceData(instance);
  std::shared_ptr<Threads> threads = instance->threads;
  threads->tsfn = Tsfn::New(env, "ontop.native", 0, 1);
  threads->tsfn.Unref(env);
  // Registered after the tsfn, so it runs before Node closes it: from then on
  // a returning thread drops its call instead of touching the tsfn.
  env.AddCleanupHook([threads] {
    std::lock_guard<std::mutex> lock(threads->mutex);
    threads->closed = true;
    threads->wake.notify_all();
  });

  exports.Set("mount", Napi::Function::New(env, Mount, "mount"));
  exports.Set("umount2", Napi::Function::New(env, Umount2, "umount2"));
  exports.Set("flock", Napi::Function::New(env, Flock, "flock"));
  exports.Set("openDir", Napi::Function::New(env, OpenDir, "openDir"));
  exports.Set("fsMount", Napi::Function::New(env, FsMount, "fsMount"));
  exports.Set("subvolCreate", Napi::Function::New(env, SubvolCreate, "subvolCreate"));
  exports.Set("subvolDestroy", Napi::Function::New(env, SubvolDestroy, "subvolDestroy"));
  exports.Set("qgroupLimit", Napi::Function::New(env, QgroupLimit, "qgroupLimit"));
  exports.Set("btrfsId", Napi::Function::New(env, BtrfsId, "btrfsId"));
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim, "mallocTrim"));
  exports.Set("threadLimit", Napi::Number::New(env, kThreadLimit));

  Napi::Object c = Napi::Object::New(env);
  c.Set("MS_RDONLY", Napi::Number::New(env, MS_RDONLY));
  c.Set("MS_NOSUID", Napi::Number::New(env, MS_NOSUID));
  c.Set("MS_NODEV", Napi::Number::New(env, MS_NODEV));
  c.Set("MS_NOEXEC", Napi::Number::New(env, MS_NOEXEC));
  c.Set("MS_BIND", Napi::Number::New(env, MS_BIND));
  c.Set("MS_REC", Napi::Number::New(env, MS_REC));
  c.Set("MS_PRIVATE", Napi::Number::New(env, MS_PRIVATE));
  c.Set("MNT_FORCE", Napi::Number::New(env, MNT_FORCE));
  c.Set("MNT_DETACH", Napi::Number::New(env, MNT_DETACH));
  c.Set("MNT_EXPIRE", Napi::Number::New(env, MNT_EXPIRE));
  c.Set("UMOUNT_NOFOLLOW", Napi::Number::New(env, UMOUNT_NOFOLLOW));
  c.Set("LOCK_SH", Napi::Number::New(env, LOCK_SH));
  c.Set("LOCK_EX", Napi::Number::New(env, LOCK_EX));
  c.Set("LOCK_NB", Napi::Number::New(env, LOCK_NB));
  c.Set("LOCK_UN", Napi::Number::New(env, LOCK_UN));
  InitFileCalls(env, exports, c);
  exports.Set("constants", c);
  return exports;
}

}  // namespace

NODE_API_MODULE(ontop_native, Init)
