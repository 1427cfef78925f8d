//! greet (Zig): metadata, application errors and host calls; the same function as greet.c
//! and greet.rs (see greet.c for what each handler answers).
const std = @import("std");
const spear = @import("spear");

comptime {
    spear.handler("greet", greet);
    spear.handler("meta", meta);
    spear.handler("fail", fail);
    spear.handler("pull", pull);
    spear.handler("clock", clock);
}

fn greet(req: *const spear.Request) !spear.Response {
    const user = req.meta("user") orelse return spear.fail(400, "missing 'user' metadata");
    spear.log(.info, try std.fmt.allocPrint(spear.arena, "greeting {s}", .{user}));
    spear.send("greeted", user) catch |err| {
        const code = spear.hostErrorCode(err);
        return spear.fail(-code, try std.fmt.allocPrint(spear.arena, "send failed: code {d}", .{code}));
    };
    return spear.output(try std.fmt.allocPrint(spear.arena, "hello, {s} ({d} bytes)", .{ user, req.input().len }));
}

fn meta(req: *const spear.Request) !spear.Response {
    var out: std.ArrayList(u8) = .empty;
    var it = req.metadata();
    while (it.next()) |pair| {
        try out.appendSlice(spear.arena, pair.key);
        try out.append(spear.arena, '=');
        try out.appendSlice(spear.arena, pair.value);
        try out.append(spear.arena, '\n');
    }
    return spear.output(out.items);
}

fn fail(req: *const spear.Request) !spear.Response {
    return spear.fail(42, try std.mem.concat(spear.arena, u8, &.{ "failed on purpose: ", req.input() }));
}

fn pull(_: *const spear.Request) !spear.Response {
    var out: std.ArrayList(u8) = .empty;
    while (true) {
        const m = spear.recv() catch |err| return spear.fail(-spear.hostErrorCode(err), "recv failed");
        const msg = m orelse return spear.output(out.items);
        try out.appendSlice(spear.arena, msg.topic);
        try out.append(spear.arena, '=');
        try out.appendSlice(spear.arena, msg.data);
        try out.append(spear.arena, ';');
    }
}

fn clock(_: *const spear.Request) !spear.Response {
    return spear.output(try std.fmt.allocPrint(spear.arena, "{d}", .{spear.now()}));
}
