//! host_call (Zig): handlers relay and config, the same as in host_call.c (see there).
const spear = @import("spear");

comptime {
    spear.handler("relay", relay);
    spear.handler("config", config);
}

fn relay(req: *const spear.Request) !spear.Response {
    const result = spear.call("transform", req.input()) catch |err| switch (err) {
        error.NotFound => return spear.fail(404, "no host function named transform"),
        else => return err,
    };
    return switch (result) {
        .ok => |out| spear.output(out),
        .failed => |message| spear.fail(spear.code_host_function, message),
    };
}

fn config(req: *const spear.Request) !spear.Response {
    const value = try spear.config(req.input()) orelse return spear.fail(404, "no such configuration key");
    return spear.output(value);
}
