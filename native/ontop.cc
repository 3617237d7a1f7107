// ontop's native addon: thin wrappers over mount(2), umount2(2) and flock(2).
//
// Policy, paths and error formatting live in lib/native.ts. This file only
// moves arguments to a syscall off the JavaScript thread and hands back
// {errno, syscall} on failure. No mutable statics: every call owns its state.
#include <napi.h>

#include <cerrno>
#include <string>
#include <thread>

#include <sys/file.h>
#include <sys/mount.h>

namespace {

// Settles a promise with undefined, or with {errno, syscall} for JS to turn
// into a Node-style error (lib/native.ts).
Napi::Value ErrorInfo(Napi::Env env, int err, const char* syscall) {
  Napi::Object info = Napi::Object::New(env);
  info.Set("errno", Napi::Number::New(env, err));
  info.Set("syscall", Napi::String::New(env, syscall));
  return info;
}

// Runs one syscall on a libuv pool thread. mount and umount2 finish quickly
// (they do not wait on other processes), so the pool is the right place.
class SyscallWorker : public Napi::AsyncWorker {
 public:
  SyscallWorker(Napi::Env env, const char* syscall)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), syscall_(syscall) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  virtual int Call() = 0;

  void Execute() override {
    int rc;
    do {
      rc = Call();
    } while (rc == -1 && errno == EINTR);
    errno_ = rc == -1 ? errno : 0;
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (errno_ == 0) {
      deferred_.Resolve(env.Undefined());
    } else {
      deferred_.Reject(ErrorInfo(env, errno_, syscall_));
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  const char* syscall_;
  int errno_ = 0;
};

class MountWorker : public SyscallWorker {
 public:
  MountWorker(Napi::Env env, std::string source, std::string target, std::string fstype,
              unsigned long flags, std::string data)
      : SyscallWorker(env, "mount"),
        source_(std::move(source)),
        target_(std::move(target)),
        fstype_(std::move(fstype)),
        flags_(flags),
        data_(std::move(data)) {}

 protected:
  int Call() override {
    return mount(source_.c_str(), target_.c_str(), fstype_.c_str(), flags_, data_.c_str());
  }

 private:
  std::string source_, target_, fstype_;
  unsigned long flags_;
  std::string data_;
};

class Umount2Worker : public SyscallWorker {
 public:
  Umount2Worker(Napi::Env env, std::string target, int flags)
      : SyscallWorker(env, "umount2"), target_(std::move(target)), flags_(flags) {}

 protected:
  int Call() override { return umount2(target_.c_str(), flags_); }

 private:
  std::string target_;
  int flags_;
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
  if (!CheckArgs(info, "sssns")) return info.Env().Undefined();
  auto* worker = new MountWorker(info.Env(), info[0].As<Napi::String>(), info[1].As<Napi::String>(),
                                 info[2].As<Napi::String>(),
                                 static_cast<unsigned long>(info[3].As<Napi::Number>().Int64Value()),
                                 info[4].As<Napi::String>());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Umount2(const Napi::CallbackInfo& info) {
  if (!CheckArgs(info, "sn")) return info.Env().Undefined();
  auto* worker = new Umount2Worker(info.Env(), info[0].As<Napi::String>(), info[1].As<Napi::Number>().Int32Value());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

int FlockRetry(int fd, int operation) {
  int rc;
  do {
    rc = flock(fd, operation);
  } while (rc == -1 && errno == EINTR);
  return rc == -1 ? errno : 0;
}

// flock(2). A non-blocking attempt runs inline (it never waits). When it
// would wait, the wait gets a thread of its own: a lock may be held for as
// long as another process likes, and a libuv pool thread spent waiting would
// starve fs calls (the pool has four). The thread reports back through a
// thread-safe function, which also keeps the loop alive while it waits.
Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgs(info, "nn")) return env.Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int operation = info[1].As<Napi::Number>().Int32Value();
  auto deferred = Napi::Promise::Deferred::New(env);
  Napi::Promise promise = deferred.Promise();

  int err = FlockRetry(fd, operation | LOCK_NB);
  if (err == 0) {
    deferred.Resolve(env.Undefined());
    return promise;
  }
  if ((operation & LOCK_NB) != 0 || err != EWOULDBLOCK) {
    deferred.Reject(ErrorInfo(env, err, "flock"));
    return promise;
  }

  auto* settle = new Napi::Promise::Deferred(deferred);
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function(), "ontop.flock", 0, 1);
  std::thread([tsfn, settle, fd, operation]() mutable {
    int result = FlockRetry(fd, operation);
    auto callback = [settle, result](Napi::Env cbEnv, Napi::Function) {
      if (result == 0) {
        settle->Resolve(cbEnv.Undefined());
      } else {
        settle->Reject(ErrorInfo(cbEnv, result, "flock"));
      }
      delete settle;
    };
    if (tsfn.BlockingCall(callback) != napi_ok) delete settle;
    tsfn.Release();
  }).detach();
  return promise;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount, "mount"));
  exports.Set("umount2", Napi::Function::New(env, Umount2, "umount2"));
  exports.Set("flock", Napi::Function::New(env, Flock, "flock"));

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
  exports.Set("constants", c);
  return exports;
}

}  // namespace

NODE_API_MODULE(ontop_native, Init)
