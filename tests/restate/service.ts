// Test service for the worker's Restate awakeable callbacks (see smoke.sh).
//
// Virtual Object `Caller`:
//   wait(input)     exclusive: creates an awakeable, stores its id in state key `awakeable`,
//                   awaits it and returns {"resolved": <value>}, or {"rejected": <message>}
//                   when it is rejected. Clears the stored id when done.
//   awakeableId()   shared (runs while `wait` is suspended): the stored id, or null.
//
// Listens with HTTP/2 cleartext on 127.0.0.1:$PORT and prints `listening <port>` once ready.

// Node 20 lacks Promise.withResolvers, which the SDK uses (Node 22 has it).
{
  const P = Promise as unknown as { withResolvers?: unknown };
  if (typeof P.withResolvers !== "function") {
    P.withResolvers = function <T>() {
      let resolve!: (value: T | PromiseLike<T>) => void;
      let reject!: (reason?: unknown) => void;
      const promise = new Promise<T>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      return { promise, resolve, reject };
    };
  }
}

import * as http2 from "node:http2";
import * as restate from "@restatedev/restate-sdk";

type WaitResult = { resolved: unknown } | { rejected: string };

const caller = restate.object({
  name: "Caller",
  handlers: {
    wait: restate.handlers.object.exclusive(
      async (ctx: restate.ObjectContext, _input?: unknown): Promise<WaitResult> => {
        const { id, promise } = ctx.awakeable<unknown>(restate.serde.json);
        ctx.set("awakeable", id);
        let result: WaitResult;
        try {
          result = { resolved: await promise };
        } catch (e) {
          if (!(e instanceof restate.TerminalError)) throw e;
          result = { rejected: e.message };
        }
        ctx.clear("awakeable");
        return result;
      },
    ),
    awakeableId: restate.handlers.object.shared(
      async (ctx: restate.ObjectSharedContext): Promise<string | null> =>
        (await ctx.get<string>("awakeable")) ?? null,
    ),
  },
});

const port = Number(process.env.PORT ?? "9080");
const server = http2.createServer(restate.createEndpointHandler({ services: [caller] }));
server.on("error", (e) => {
  console.error(`service: ${e}`);
  process.exit(1);
});
server.listen(port, "127.0.0.1", () => {
  const addr = server.address();
  const bound = addr && typeof addr === "object" ? addr.port : port;
  console.log(`listening ${bound}`);
});
for (const sig of ["SIGTERM", "SIGINT"] as const) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
