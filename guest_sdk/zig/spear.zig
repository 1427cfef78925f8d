//! spear.zig - the spear guest SDK for Zig: ABI v1 (docs/wasm-abi.md).
//!
//! Importing this file (as the module "spear") defines the guest runtime: the exports
//! `spear_abi_version`, `spear_init`, `spear_reserve`, the 80-byte control block and the
//! per-call arena. Declare handlers in a comptime block:
//!
//!     const spear = @import("spear");
//!     comptime {
//!         spear.handler("echo", echo); // exported as "spear.handler.echo"
//!     }
//!     fn echo(req: *const spear.Request) spear.Response {
//!         return spear.output(req.input()); // zero copy
//!     }
//!
//! Build with `spear-guest build echo.zig -o echo.wasm` (zig from the `ziglang` package;
//! written against zig 0.17). Sections: ABI constants and control block, host imports, memory
//! (spans and the arena), the request, responses, handlers, runtime exports.

const std = @import("std");

comptime {
    if (@import("builtin").cpu.arch != .wasm32) @compileError("spear.zig targets wasm32");
}

// ------------------------------------------------------------------------------------------
// ABI v1 constants and the control block
// ------------------------------------------------------------------------------------------

pub const abi_version: i32 = 1;
pub const magic: u32 = 0x52455053; // "SPER" as little-endian bytes
pub const status_ok: i32 = 0;
pub const status_error: i32 = 1;
/// err_code of the errors the SDK makes when the arena is out of memory.
pub const code_nomem: i32 = 12;
/// err_code when a handler returns a Zig error other than OutOfMemory (message: its name).
pub const code_unhandled: i32 = 500;
pub const initial_req_cap: u32 = 16 * 1024;

/// The 80-byte control block shared with the host. Pointer fields are u32 offsets.
pub const Control = extern struct {
    magic: u32,
    abi_version: u32,
    req_ptr: u32,
    req_cap: u32,
    name_ptr: u32,
    name_len: u32,
    meta_ptr: u32,
    meta_len: u32,
    input_ptr: u32,
    input_len: u32,
    meta_count: u32,
    flags: u32,
    request_id: u64,
    deadline_ns: u64,
    out_ptr: u32,
    out_len: u32,
    err_code: i32,
    reserved: u32,
};

comptime {
    std.debug.assert(@sizeOf(Control) == 80);
    std.debug.assert(@offsetOf(Control, "request_id") == 48);
    std.debug.assert(@offsetOf(Control, "out_ptr") == 64);
}

var initial_req: [initial_req_cap]u8 align(8) = @splat(0); // static: inside the initial memory
var cb: Control align(8) = .{
    .magic = magic,
    .abi_version = abi_version,
    .req_ptr = 0,
    .req_cap = 0,
    .name_ptr = 0,
    .name_len = 0,
    .meta_ptr = 0,
    .meta_len = 0,
    .input_ptr = 0,
    .input_len = 0,
    .meta_count = 0,
    .flags = 0,
    .request_id = 0,
    .deadline_ns = 0,
    .out_ptr = 0,
    .out_len = 0,
    .err_code = 0,
    .reserved = 0,
};

// ------------------------------------------------------------------------------------------
// Host imports (module "spear"). A module imports only the ones it calls. To add a host
// call: declare it in `imports` and wrap it below.
// ------------------------------------------------------------------------------------------

const imports = struct {
    extern "spear" fn send(topic: [*]const u8, topic_len: u32, data: [*]const u8, data_len: u32) i32;
    extern "spear" fn recv(topic_buf: [*]u8, topic_cap: u32, data_buf: [*]u8, data_cap: u32, sizes: *[2]u32) i32;
    extern "spear" fn log(level: i32, msg: [*]const u8, len: u32) void;
    extern "spear" fn now() u64;
    // ABI v1 revision 2: a module calling these loads only on a host that has them.
    extern "spear" fn host_call(name: [*]const u8, name_len: u32, input: [*]const u8, input_len: u32, out: [*]u8, out_cap: u32, out_len: *u32) i32;
    extern "spear" fn host_result(out: [*]u8, out_cap: u32) i32;
    extern "spear" fn config_get(key: [*]const u8, key_len: u32, out: [*]u8, out_cap: u32, out_len: *u32) i32;
};

pub const HostError = error{
    /// -2: the host's outbox is full
    Full,
    /// -3: topic plus data exceed the instance's maximum message size
    TooLarge,
    /// -4: recv buffers too small; the message stays queued
    BufferTooSmall,
    /// the guest's arena is out of memory (SDK helpers only)
    OutOfMemory,
    /// any other code the host returned
    HostCallFailed,
};

fn hostError(code: i32) HostError {
    return switch (code) {
        -2 => error.Full,
        -3 => error.TooLarge,
        -4 => error.BufferTooSmall,
        -5 => error.OutOfMemory,
        else => error.HostCallFailed,
    };
}

/// The ABI code of a host error (negative).
pub fn hostErrorCode(err: HostError) i32 {
    return switch (err) {
        error.Full => -2,
        error.TooLarge => -3,
        error.BufferTooSmall => -4,
        error.OutOfMemory => -5,
        error.HostCallFailed => -1,
    };
}

/// Queue a message for the host (its channel `receive()` returns it).
pub fn send(topic: []const u8, data: []const u8) HostError!void {
    const rc = imports.send(topic.ptr, @intCast(topic.len), data.ptr, @intCast(data.len));
    if (rc != 0) return hostError(rc);
}

pub const Sizes = struct { topic_len: u32, data_len: u32 };

/// Pull the next message the host queued into the given buffers: the sizes when one was
/// delivered, null when none is queued. On error.BufferTooSmall, `needed` (if given) holds the
/// sizes the message needs.
pub fn recvInto(topic_buf: []u8, data_buf: []u8, needed: ?*Sizes) HostError!?Sizes {
    var sizes: [2]u32 = .{ 0, 0 };
    const rc = imports.recv(topic_buf.ptr, @intCast(topic_buf.len), data_buf.ptr, @intCast(data_buf.len), &sizes);
    if (needed) |n| n.* = .{ .topic_len = sizes[0], .data_len = sizes[1] };
    return switch (rc) {
        1 => .{ .topic_len = sizes[0], .data_len = sizes[1] },
        0 => null,
        else => hostError(rc),
    };
}

pub const Message = struct { topic: []const u8, data: []const u8 };

/// Pull the next message into arena buffers sized as needed (retrying when the host says
/// they are too small). null when none is queued.
pub fn recv() HostError!?Message {
    var topic_cap: usize = 64;
    var data_cap: usize = 256;
    while (true) {
        const topic = arena.alloc(u8, topic_cap) catch return error.OutOfMemory;
        const data = arena.alloc(u8, data_cap) catch return error.OutOfMemory;
        var needed: Sizes = undefined;
        const got = recvInto(topic, data, &needed) catch |err| {
            if (err != error.BufferTooSmall) return err;
            const t = @max(topic_cap, needed.topic_len);
            const d = @max(data_cap, needed.data_len);
            if (t == topic_cap and d == data_cap) return err; // host inconsistency: do not spin
            topic_cap = t;
            data_cap = d;
            continue;
        };
        const sizes = got orelse return null;
        return .{ .topic = topic[0..sizes.topic_len], .data = data[0..sizes.data_len] };
    }
}

pub const Level = enum(i32) { trace = 0, debug = 1, info = 2, warn = 3, err = 4 };

/// Log a UTF-8 line (logged by the host under `spear.guest`).
pub fn log(level: Level, message: []const u8) void {
    imports.log(@intFromEnum(level), message.ptr, @intCast(message.len));
}

/// Monotonic clock in nanoseconds (the clock of `Request.deadlineNs`).
pub fn now() u64 {
    return imports.now();
}

/// err_code that passes a host function's failure on: the host reports the call as failed by
/// the host function (code "host_function"), with its message: `spear.fail(spear.code_host_function, message)`.
pub const code_host_function: i32 = -7;

/// What a Python host function answered: its output, or its failure's message.
pub const CallResult = union(enum) { ok: []const u8, failed: []const u8 };

/// Call the Python host function `name` on `input` (`spear.host_call`). The result lives in
/// the per-call arena. error.NotFound: the host has no function of that name. A result too
/// big for the first buffer is fetched once more from the host, never computed twice.
pub fn call(name: []const u8, input: []const u8) error{ NotFound, OutOfMemory }!CallResult {
    const cap: usize = @max(input.len, 256);
    const buf = try arena.alloc(u8, cap);
    var len: u32 = 0;
    const rc = imports.host_call(name.ptr, @intCast(name.len), input.ptr, @intCast(input.len), buf.ptr, @intCast(cap), &len);
    if (rc == -6) return error.NotFound;
    var result: []const u8 = buf[0..@min(len, cap)];
    if (len > cap) {
        const big = try arena.alloc(u8, len);
        if (imports.host_result(big.ptr, len) < 0) return .{ .failed = "spear: the host lost the held result" };
        result = big;
    }
    return if (rc == -7) .{ .failed = result } else .{ .ok = result };
}

/// The configuration value of `key` (`spear.config_get`), in the per-call arena; null when
/// the key is absent (an empty value is "").
pub fn config(key: []const u8) error{OutOfMemory}!?[]const u8 {
    var cap: usize = 64;
    while (true) {
        const buf = try arena.alloc(u8, cap);
        var len: u32 = 0;
        const rc = imports.config_get(key.ptr, @intCast(key.len), buf.ptr, @intCast(cap), &len);
        if (rc == 0) return buf[0..len];
        if (rc == -4 and len > cap) {
            cap = len;
            continue;
        }
        return null;
    }
}

// ------------------------------------------------------------------------------------------
// Memory: the SDK owns only pages it grew itself with memory.grow ("spans"), so it shares
// linear memory safely with any other allocator. Persistent blocks come first; the arena
// follows the reset point and is reset at the start of every handler call. A span grows in
// place while nobody else has grown memory since; otherwise a new span is linked in after the
// current one, so every span after the current one is free arena space. Same design as
// spear.h and the Rust crate.
// ------------------------------------------------------------------------------------------

const page: usize = 65536;
const addr_limit: usize = 0xFFFF0000; // never hand out the last 64 KiB: no arithmetic wraps
const grow_min_pages: usize = 16;

const Span = extern struct { next: ?*Span, end: usize };

const State = struct {
    reset_span: ?*Span = null,
    reset_top: usize = 0,
    cur: ?*Span = null,
    top: usize = 0,
    end: usize = 0,
};
var state: State = .{};

fn memoryEnd() usize {
    const have: u64 = @as(u64, @wasmMemorySize(0)) * page;
    return if (have > addr_limit) addr_limit else @intCast(have);
}

const Grown = struct { start: usize, pages: usize };

fn grow(pages: usize) ?Grown {
    if (pages < grow_min_pages) {
        const old = @wasmMemoryGrow(0, grow_min_pages);
        if (old != -1) return checked(old, grow_min_pages);
    }
    const old = @wasmMemoryGrow(0, pages);
    if (old == -1) return null;
    return checked(old, pages);
}

fn checked(old: isize, pages: usize) ?Grown {
    const start: u64 = @as(u64, @intCast(old)) * page;
    if (start >= addr_limit) return null;
    return .{ .start = @intCast(start), .pages = pages };
}

fn clampEnd(g: Grown) usize {
    const end: u64 = @as(u64, g.start) + @as(u64, g.pages) * page;
    return if (end > addr_limit) addr_limit else @intCast(end);
}

/// Make span s reach `need` by growing memory in place (only while it ends where memory ends).
fn extend(s: *Span, need: u64) bool {
    if (need <= s.end) return true;
    if (need > addr_limit or s.end != memoryEnd()) return false;
    const g = grow(@intCast((need - s.end + page - 1) / page)) orelse return false;
    if (g.start != s.end) return false;
    s.end = clampEnd(g);
    if (state.cur == s) state.end = s.end;
    return true;
}

fn alignUp(x: usize, a: usize) usize {
    return (x + a - 1) & ~(a - 1);
}

fn allocSlow(size: usize, a: usize) ?usize {
    if (state.cur) |s| {
        const p = alignUp(state.top, a);
        if (extend(s, @as(u64, p) + size)) {
            state.top = p + size;
            return p;
        }
        var it = s.next;
        while (it) |n| : (it = n.next) {
            const q = alignUp(@intFromPtr(n) + @sizeOf(Span), a);
            if (q <= n.end and size <= n.end - q) {
                state.cur = n;
                state.end = n.end;
                state.top = q + size;
                return q;
            }
        }
    }
    const need: u64 = @as(u64, @sizeOf(Span)) + a + size;
    const g = grow(@intCast((need + page - 1) / page)) orelse return null;
    const end = clampEnd(g);
    if (@as(u64, g.start) + need > end) return null;
    const n: *Span = @ptrFromInt(g.start);
    n.* = .{ .next = null, .end = end };
    const data = g.start + @sizeOf(Span);
    if (state.cur) |s| {
        n.next = s.next;
        s.next = n;
    } else {
        state.reset_span = n;
        state.reset_top = data;
    }
    const q = alignUp(data, a);
    state.cur = n;
    state.end = end;
    state.top = q + size;
    return q;
}

/// `size` bytes aligned to `a` (a power of two) in the per-call arena, as an address.
fn allocRaw(size: usize, a: usize) ?usize {
    const p = alignUp(state.top, a);
    if (p != 0 and p <= state.end and size <= state.end - p) {
        state.top = p + size;
        return p;
    }
    return allocSlow(size, a);
}

fn isPersistent(p: usize) bool {
    return state.cur == state.reset_span and p < state.reset_top;
}

/// Resize the most recent arena allocation in place.
fn resizeRaw(p: usize, old: usize, new: usize) bool {
    if (new <= old) {
        if (p + old == state.top and !isPersistent(p)) state.top = p + new;
        return true;
    }
    if (p + old != state.top or isPersistent(p)) return false;
    const s = state.cur orelse return false;
    if (!extend(s, @as(u64, p) + new)) return false;
    state.top = p + new;
    return true;
}

fn arenaReset() void {
    state.cur = state.reset_span;
    state.top = state.reset_top;
    state.end = if (state.reset_span) |s| s.end else 0;
}

fn persist() void {
    state.reset_span = state.cur;
    state.reset_top = state.top;
}

const arena_vtable: std.mem.Allocator.VTable = .{
    .alloc = arenaAlloc,
    .resize = arenaResize,
    .remap = arenaRemap,
    .free = arenaFree,
};

fn arenaAlloc(_: *anyopaque, len: usize, alignment: std.mem.Alignment, _: usize) ?[*]u8 {
    const p = allocRaw(len, alignment.toByteUnits()) orelse return null;
    return @ptrFromInt(p);
}

fn arenaResize(_: *anyopaque, memory: []u8, _: std.mem.Alignment, new_len: usize, _: usize) bool {
    return resizeRaw(@intFromPtr(memory.ptr), memory.len, new_len);
}

fn arenaRemap(ctx: *anyopaque, memory: []u8, alignment: std.mem.Alignment, new_len: usize, ra: usize) ?[*]u8 {
    return if (arenaResize(ctx, memory, alignment, new_len, ra)) memory.ptr else null;
}

fn arenaFree(_: *anyopaque, memory: []u8, _: std.mem.Alignment, _: usize) void {
    // Only the most recent block can be given back; the rest goes at the next call's reset.
    const p = @intFromPtr(memory.ptr);
    if (p + memory.len == state.top and !isPersistent(p)) state.top = p;
}

/// The per-call arena, as a std.mem.Allocator: reset at the start of every handler call, so
/// its memory lives until the host has copied the output out. Use it with std.ArrayList,
/// std.fmt.allocPrint and friends; `free` is optional.
pub const arena: std.mem.Allocator = .{ .ptr = undefined, .vtable = &arena_vtable };

const persistent_vtable: std.mem.Allocator.VTable = .{
    .alloc = persistentAlloc,
    .resize = std.mem.Allocator.noResize,
    .remap = std.mem.Allocator.noRemap,
    .free = std.mem.Allocator.noFree,
};

fn persistentAlloc(ctx: *anyopaque, len: usize, alignment: std.mem.Alignment, ra: usize) ?[*]u8 {
    const p = arenaAlloc(ctx, len, alignment, ra) orelse return null;
    persist();
    return p;
}

/// Memory that survives across calls (never freed). Anything allocated in the arena earlier
/// in the same call becomes persistent too. The host replaces the instance after a trap, so
/// treat it as a cache.
pub const persistent: std.mem.Allocator = .{ .ptr = undefined, .vtable = &persistent_vtable };

// ------------------------------------------------------------------------------------------
// The request
// ------------------------------------------------------------------------------------------

fn bytesAt(ptr: u32, len: u32) []const u8 {
    if (ptr == 0) return &.{};
    // keeps the host's pointer even for empty inputs, so an echo is zero-copy in every case
    const p: [*]const u8 = @ptrFromInt(ptr);
    return p[0..len];
}

/// The current request, read in place from the control block (no copy). Slices it returns
/// point into the request buffer and stay valid until the handler returns.
pub const Request = struct {
    /// The function name the host called (UTF-8, not NUL-terminated).
    pub fn name(_: *const Request) []const u8 {
        return bytesAt(cb.name_ptr, cb.name_len);
    }

    /// The request input.
    pub fn input(_: *const Request) []const u8 {
        return bytesAt(cb.input_ptr, cb.input_len);
    }

    /// The host-assigned sequence number of this call.
    pub fn requestId(_: *const Request) u64 {
        return cb.request_id;
    }

    /// The `now()` value after which the host interrupts this call, if it set one.
    pub fn deadlineNs(_: *const Request) ?u64 {
        return if (cb.deadline_ns == 0) null else cb.deadline_ns;
    }

    /// True when the host set a deadline and `now()` is past it.
    pub fn deadlinePassed(self: *const Request) bool {
        const d = self.deadlineNs() orelse return false;
        return now() >= d;
    }

    /// The metadata pairs, in order.
    pub fn metadata(_: *const Request) MetaIterator {
        return .{ .rest = bytesAt(cb.meta_ptr, cb.meta_len), .left = cb.meta_count };
    }

    /// The value of metadata key `key` (the first match).
    pub fn meta(self: *const Request, key: []const u8) ?[]const u8 {
        var it = self.metadata();
        while (it.next()) |pair| {
            if (std.mem.eql(u8, pair.key, key)) return pair.value;
        }
        return null;
    }
};

pub const MetaPair = struct { key: []const u8, value: []const u8 };

/// Iterates metadata pairs; stops early at a malformed one (our host never sends one).
pub const MetaIterator = struct {
    rest: []const u8,
    left: u32,

    fn field(self: *MetaIterator) ?[]const u8 {
        if (self.rest.len < 4) return null;
        const n = std.mem.readInt(u32, self.rest[0..4], .little);
        if (n > self.rest.len - 4) return null;
        const f = self.rest[4 .. 4 + n];
        self.rest = self.rest[4 + n ..];
        return f;
    }

    pub fn next(self: *MetaIterator) ?MetaPair {
        if (self.left == 0) return null;
        const key = self.field() orelse return self.stop();
        const value = self.field() orelse return self.stop();
        self.left -= 1;
        return .{ .key = key, .value = value };
    }

    fn stop(self: *MetaIterator) ?MetaPair {
        self.left = 0;
        return null;
    }
};

const request: Request = .{};

// ------------------------------------------------------------------------------------------
// Responses
// ------------------------------------------------------------------------------------------

/// What a handler returns: output bytes (status 0) or an application error (status 1). The
/// bytes are handed to the host without a copy, so they must stay valid until the handler
/// returns: the input, arena memory, or static data.
pub const Response = union(enum) {
    output: []const u8,
    failure: Failure,
};

pub const Failure = struct { code: i32, message: []const u8 };

/// Respond with `bytes` (no copy).
pub fn output(bytes: []const u8) Response {
    return .{ .output = bytes };
}

/// Application error: the host raises ExecutionFailed with this code and message.
pub fn fail(code: i32, message: []const u8) Response {
    return .{ .failure = .{ .code = code, .message = message } };
}

/// Where the host finds `bytes`. Zig gives empty slices from allocators a sentinel pointer
/// far outside memory; the host checks the range, so an empty one points at 0 instead.
fn address(bytes: []const u8) u32 {
    const p = @intFromPtr(bytes.ptr);
    return if (bytes.len == 0 and p > memoryEnd()) 0 else @intCast(p);
}

fn publish(r: Response) i32 {
    switch (r) {
        .output => |bytes| {
            cb.out_ptr = address(bytes);
            cb.out_len = @intCast(bytes.len);
            return status_ok;
        },
        .failure => |f| {
            cb.out_ptr = address(f.message);
            cb.out_len = @intCast(f.message.len);
            cb.err_code = f.code;
            return status_error;
        },
    }
}

fn publishError(err: anyerror) i32 {
    if (err == error.OutOfMemory) return publish(fail(code_nomem, "spear: out of memory"));
    return publish(fail(code_unhandled, @errorName(err)));
}

// ------------------------------------------------------------------------------------------
// Handlers
// ------------------------------------------------------------------------------------------

fn entry(comptime f: anytype) fn () callconv(.c) i32 {
    return struct {
        fn call() callconv(.c) i32 {
            arenaReset();
            const result = f(&request);
            return switch (@typeInfo(@TypeOf(result))) {
                .error_union => if (result) |r| publish(r) else |err| publishError(err),
                else => publish(result),
            };
        }
    }.call;
}

/// Export `f` as the handler `name` ("spear.handler.NAME"). `f` takes `*const Request` and
/// returns `Response` or `!Response`; a returned error becomes an application error (code 12
/// for OutOfMemory, else `code_unhandled` with the error's name). Call it in a comptime block.
pub fn handler(comptime name: []const u8, comptime f: anytype) void {
    @export(&entry(f), .{ .name = "spear.handler." ++ name });
}

/// Export `f` as the optional catch-all `spear_dispatch`, called for names with no handler;
/// it reads `req.name()`.
pub fn dispatch(comptime f: anytype) void {
    @export(&entry(f), .{ .name = "spear_dispatch" });
}

// ------------------------------------------------------------------------------------------
// Runtime exports
// ------------------------------------------------------------------------------------------

export fn spear_abi_version() i32 {
    return abi_version;
}

export fn spear_init(host_abi: i32) i32 {
    if (host_abi != abi_version) return 0;
    cb.magic = magic;
    cb.abi_version = abi_version;
    if (cb.req_ptr == 0) {
        cb.req_ptr = @intCast(@intFromPtr(&initial_req));
        cb.req_cap = initial_req_cap;
    }
    return @intCast(@intFromPtr(&cb));
}

export fn spear_reserve(size_arg: i32) i32 {
    const size: usize = @as(u32, @bitCast(size_arg));
    const old_ptr: usize = cb.req_ptr;
    const old_cap: usize = cb.req_cap;
    if (size <= old_cap) return 0;
    if (size > addr_limit) return 1;
    const exact = alignUp(size, 8);
    const doubled = if (old_cap <= addr_limit / 2 and old_cap * 2 > size) alignUp(old_cap * 2, 8) else exact;
    // Between calls the arena is dead, so the buffer may grow over it.
    arenaReset();
    const last = state.reset_span != null and old_ptr + old_cap == state.reset_top;
    for ([_]usize{ doubled, exact }) |cap| {
        var ptr = old_ptr;
        if (last and extend(state.reset_span.?, @as(u64, old_ptr) + cap)) {
            state.reset_top = old_ptr + cap;
        } else {
            ptr = allocRaw(cap, 8) orelse continue;
            persist();
        }
        cb.req_ptr = @intCast(ptr);
        cb.req_cap = @intCast(cap);
        arenaReset();
        return 0;
    }
    return 1; // out of memory; the old buffer is unchanged
}
