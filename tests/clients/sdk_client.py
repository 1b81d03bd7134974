"""Runs calls with the official anthropic and openai SDKs; reports what the SDK saw.

Executed by the tests in the SDK environment (`.venv-sdk`), since the SDKs need an
h11 that mitmproxy 11 does not allow. Reads a JSON list of calls on stdin, prints a
JSON list of results. Where the SDK connects is set by the environment exactly as a
developer would: `ANTHROPIC_BASE_URL`/`OPENAI_BASE_URL`, or `HTTPS_PROXY` with
`SSL_CERT_FILE` pointing at the gateway's CA.
"""

import json
import sys
import time
from typing import Any

import anthropic
import openai


def run_anthropic(call: dict[str, Any]) -> dict[str, Any]:
    client = anthropic.Anthropic(
        api_key=call.get("api_key", "sk-ant-test"),
        max_retries=call.get("max_retries", 0),
        default_headers=call.get("headers") or {},
    )
    kwargs: dict[str, Any] = {
        "model": call["model"],
        "max_tokens": call.get("max_tokens", 1024),
        "messages": [{"role": "user", "content": call.get("prompt", "Hello")}],
    }
    if call.get("metadata"):
        kwargs["metadata"] = call["metadata"]
    if call.get("extra_body"):
        kwargs["extra_body"] = call["extra_body"]
    if call.get("api") == "count_tokens":
        kwargs.pop("max_tokens")
        result = client.messages.count_tokens(**kwargs)
        return {"input_tokens": result.input_tokens}
    if not call.get("stream"):
        message = client.messages.create(**kwargs)
        return {
            "model": message.model,
            "usage": message.usage.model_dump(),
            "text": _text(message),
        }
    started = time.monotonic()
    first = None
    events = []
    with client.messages.stream(**kwargs) as stream:
        for event in stream:
            if first is None:
                first = time.monotonic() - started
            events.append(event.type)
        final = stream.get_final_message()
    return {
        "model": final.model,
        "usage": final.usage.model_dump(),
        "text": _text(final),
        "events": events,
        "first_event_s": first,
        "total_s": time.monotonic() - started,
    }


def _text(message: Any) -> str:
    return "".join(getattr(block, "text", "") for block in message.content)


def run_openai(call: dict[str, Any]) -> dict[str, Any]:
    client = openai.OpenAI(
        api_key=call.get("api_key", "sk-test"),
        max_retries=call.get("max_retries", 0),
        default_headers=call.get("headers") or {},
    )
    api = call.get("api", "chat")
    extra = call.get("extra_body")
    if api == "embeddings":
        result = client.embeddings.create(
            model=call["model"], input=call.get("prompt", "hi")
        )
        return {"model": result.model, "usage": result.usage.model_dump()}
    if api == "responses":
        if not call.get("stream"):
            response = client.responses.create(
                model=call["model"], input=call.get("prompt", "Hello"), extra_body=extra
            )
            return {"model": response.model, "usage": response.usage.model_dump()}
        kinds = []
        usage = None
        with client.responses.stream(
            model=call["model"], input=call.get("prompt", "Hello")
        ) as s:
            for event in s:
                kinds.append(event.type)
            final = s.get_final_response()
            usage = final.usage.model_dump() if final.usage else None
        return {"model": final.model, "usage": usage, "events": kinds}
    messages = [{"role": "user", "content": call.get("prompt", "Hello")}]
    if not call.get("stream"):
        completion = client.chat.completions.create(
            model=call["model"], messages=messages, extra_body=extra
        )
        return {
            "model": completion.model,
            "usage": completion.usage.model_dump(),
            "text": completion.choices[0].message.content,
        }
    kwargs: dict[str, Any] = {
        "model": call["model"],
        "messages": messages,
        "stream": True,
    }
    if call.get("include_usage"):
        kwargs["stream_options"] = {"include_usage": True}
    chunks = []
    text = ""
    for chunk in client.chat.completions.create(**kwargs):
        chunks.append(
            {
                "choices": len(chunk.choices),
                "usage": chunk.usage.model_dump() if chunk.usage else None,
            }
        )
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return {"chunks": chunks, "text": text}


def run(call: dict[str, Any]) -> dict[str, Any]:
    try:
        if call["sdk"] == "anthropic":
            return {"ok": True, **run_anthropic(call)}
        return {"ok": True, **run_openai(call)}
    except (anthropic.APIStatusError, openai.APIStatusError) as e:
        return {
            "ok": False,
            "status": e.status_code,
            "error": str(e),
            "body": e.body,
            "headers": dict(e.response.headers),
        }
    except (anthropic.APIError, openai.APIError) as e:
        return {"ok": False, "status": None, "error": f"{type(e).__name__}: {e}"}


def main() -> None:
    calls = json.load(sys.stdin)
    json.dump([run(call) for call in calls], sys.stdout)


if __name__ == "__main__":
    main()
