// as_filter: a Proxy-Wasm filter written with the AssemblyScript SDK @solo-io/proxy-runtime,
// used unchanged from the npm registry: the proof that a real SDK's module runs in metaproxy.
//
// Root id "as_filter". Configuration: any string (metaproxy passes a YAML mapping as JSON).
// - every request gets `x-wasm-as: <configuration>` (or "hello" without one)
//   and `x-wasm-as-method: <method>` read back from the request header map;
// - a request whose `x-as-deny` is "yes" is refused with a 403 local response;
// - every response gets `x-wasm-as-response: <method>`.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
  send_local_response, GrpcStatusValues, Headers,
} from "@solo-io/proxy-runtime";

class AsFilterRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new AsFilter(context_id, this);
  }
}

class AsFilter extends Context {
  method: string = "";

  constructor(context_id: u32, root_context: AsFilterRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const config = this.root_context.getConfiguration();
    const headers = stream_context.headers.request;
    if (headers.get("x-as-deny") == "yes") {
      send_local_response(403, "denied by the AssemblyScript filter", new ArrayBuffer(0), [] as Headers,
        GrpcStatusValues.PermissionDenied);
      return FilterHeadersStatusValues.StopIteration;
    }
    headers.add("x-wasm-as", config == "" ? "hello" : config);
    this.method = headers.get("method");
    headers.replace("x-wasm-as-method", this.method);
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.replace("x-wasm-as-response", this.method);
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new AsFilterRoot(context_id); }, "as_filter");
