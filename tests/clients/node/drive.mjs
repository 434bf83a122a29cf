// The official openai SDK for Node as a client of the appliance gateway.
//
//   APPLIANCE_GATEWAY_PLAN='{"base_url": ..., "key": ..., "keys": {...}, "model": ...}' \
//     node drive.mjs SCENARIO [ARGUMENTS-AS-JSON]
//
// Runs one scenario the way application code uses the SDK and prints one JSON document: what
// the client saw (contents, its exception classes, headers) and `calls`, every request the
// SDK put on the wire (its own retries included), counted by the fetch it is given. The
// assertions live in tests/integration/test_gateway_node.py, which compares `calls` with the
// audit records the gateway wrote.
import OpenAI, {
  APIError,
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
} from 'openai';

const plan = JSON.parse(process.env.APPLIANCE_GATEWAY_PLAN);
const [scenario, argument] = process.argv.slice(2);
const options = argument ? JSON.parse(argument) : {};
const HELLO = [{ role: 'user', content: 'hello' }];
let calls = 0;

function client(key = plan.key, settings = {}) {
  return new OpenAI({
    baseURL: plan.base_url,
    apiKey: key,
    fetch: (url, init) => {
      calls += 1;
      return fetch(url, init);
    },
    ...settings,
  });
}

const CLASSES = {
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
};

// What application code can tell from the exception the SDK throws.
function seen(error) {
  if (!(error instanceof APIError)) throw error;
  const classes = Object.keys(CLASSES).filter((name) => error instanceof CLASSES[name]);
  return {
    classes,
    status: error.status,
    code: error.code ?? null,
    type: error.type ?? null,
    request_id: error.requestID ?? error.headers?.get('x-request-id') ?? null,
    should_retry: error.headers?.get('x-should-retry') ?? null,
    retry_after: error.headers?.get('retry-after') ?? null,
  };
}

async function refused(call) {
  try {
    await call();
  } catch (error) {
    return seen(error);
  }
  throw new Error('the call was expected to fail and did not');
}

function ids(response) {
  return {
    request_id: response.headers.get('x-request-id'),
    client_request_id: response.headers.get('x-client-request-id'),
  };
}

const scenarios = {
  async chat() {
    const { data, response } = await client()
      .chat.completions.create(
        { model: plan.model, messages: HELLO, max_tokens: 3, user: 'carol@lab' },
        { headers: { 'X-Request-Id': 'node-trace-7' } },
      )
      .withResponse();
    const [choice] = data.choices;
    return {
      ...ids(response),
      content: choice.message.content,
      role: choice.message.role,
      usage: data.usage,
    };
  },

  // The loop every tutorial writes: chunk.choices[0] is a TypeError on a usage-only chunk.
  async stream() {
    const { data: stream, response } = await client()
      .chat.completions.create({ model: plan.model, messages: HELLO, stream: true, ...options })
      .withResponse();
    const pieces = [];
    const finish = [];
    for await (const chunk of stream) {
      pieces.push(chunk.choices[0].delta.content ?? '');
      finish.push(chunk.choices[0].finish_reason ?? null);
    }
    return { ...ids(response), pieces, finish };
  },

  async completion_stream_with_usage() {
    const { data: stream, response } = await client()
      .completions.create({
        model: plan.model,
        prompt: 'x',
        stream: true,
        stream_options: { include_usage: true },
        ...options,
      })
      .withResponse();
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const last = chunks.at(-1);
    return {
      ...ids(response),
      texts: chunks.slice(0, -1).map((chunk) => chunk.choices[0].text),
      last_choices: last.choices.length,
      usage: last.usage ?? null,
    };
  },

  async completion() {
    const { data, response } = await client()
      .completions.create({ model: plan.model, prompt: 'x', ...options })
      .withResponse();
    return { ...ids(response), text: data.choices[0].text, usage: data.usage };
  },

  // The SDK asks for base64 unless told otherwise, and decodes it; both must give the floats.
  async embeddings() {
    const sdk = client();
    const plain = await sdk.embeddings.create({ model: plan.model, input: 'x' }).withResponse();
    const floats = await sdk.embeddings
      .create({ model: plan.model, input: 'x', encoding_format: 'float' })
      .withResponse();
    return {
      base64: { ...ids(plain.response), embedding: plain.data.data[0].embedding },
      float: { ...ids(floats.response), embedding: floats.data.data[0].embedding },
    };
  },

  async tools() {
    const tools = [
      {
        type: 'function',
        function: {
          name: 'lookup_ticket',
          description: 'Find a support ticket by number',
          parameters: {
            type: 'object',
            properties: { number: { type: 'integer' } },
            required: ['number'],
          },
        },
      },
    ];
    const tool_choice = { type: 'function', function: { name: 'lookup_ticket' } };
    const { data, response } = await client()
      .chat.completions.create({
        model: plan.model,
        messages: HELLO,
        max_tokens: 1,
        tools,
        tool_choice,
        parallel_tool_calls: false,
      })
      .withResponse();
    return { ...ids(response), tools, tool_choice, content: data.choices[0].message.content };
  },

  async models() {
    const sdk = client();
    const listed = [];
    for await (const model of sdk.models.list()) listed.push(model.id);
    const model = await sdk.models.retrieve(plan.model);
    return {
      listed,
      retrieved: { id: model.id, object: model.object, owned_by: model.owned_by },
    };
  },

  // 401, 404 and 429, each with the SDK's default two retries: only the 429 may be retried,
  // and it is given no retries here so the test need not wait out a minute's limit.
  async errors() {
    const unknown_key = await refused(() =>
      client('apl_deadbeef_notakey').chat.completions.create({ model: plan.model, messages: HELLO }),
    );
    const unknown_model = await refused(() =>
      client().chat.completions.create({ model: 'nope', messages: HELLO }),
    );
    const not_allowed = await refused(() =>
      client(plan.keys.limited).chat.completions.create({ model: 'down', messages: HELLO }),
    );
    const throttled = client(plan.keys.throttled, { maxRetries: 0 });
    const first = await throttled.chat.completions
      .create({ model: plan.model, messages: HELLO, max_tokens: 1 })
      .withResponse();
    const limited = await refused(() =>
      throttled.chat.completions.create({ model: plan.model, messages: HELLO, max_tokens: 1 }),
    );
    return {
      unknown_key,
      unknown_model,
      not_allowed,
      first: ids(first.response),
      limited,
    };
  },

  // A 503 from the runtime: the SDK retries twice, waiting as Retry-After says.
  async retried() {
    const started = Date.now();
    const error = await refused(() =>
      client().completions.create({ model: plan.model, prompt: 'x', x_status: 503 }),
    );
    return { ...error, elapsed_ms: Date.now() - started };
  },

  // Leaving the loop after the first chunk aborts the request: the gateway must still write
  // the call's one record.
  async cancelled() {
    const { data: stream, response } = await client()
      .chat.completions.create({
        model: plan.model,
        messages: HELLO,
        max_tokens: 3,
        stream: true,
        x_gate: true,
      })
      .withResponse();
    let first = null;
    for await (const chunk of stream) {
      first = chunk.choices[0].delta.content;
      break;
    }
    return { ...ids(response), first, aborted: stream.controller.signal.aborted };
  },
};

const run = scenarios[scenario];
if (run === undefined) {
  process.stderr.write(`unknown scenario ${scenario}; one of ${Object.keys(scenarios)}\n`);
  process.exit(2);
}
const result = await run();
process.stdout.write(`${JSON.stringify({ calls, result })}\n`);
