"""LlamaIndex against a live Hearth, run in its own virtual environment (.venv-llamaindex:
LlamaIndex's OpenAI integration needs openai<3, Hearth's suite tests the newest client),
with the settings README recommends. Prints one JSON object of what it saw; the test
(tests/test_llamaindex.py) judges it.

    .venv-llamaindex/bin/python tests/clients/llamaindex_check.py URL CHAT_MODEL EMBED_MODEL
"""

from __future__ import annotations

import json
import sys

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
from llama_index.llms.openai_like import OpenAILike

FACT = "The access code for the Hearth vault is ZEBRA-4471."
DOCUMENTS = [
    "The vault was built in 1998 from reinforced concrete and has two doors.",
    f"{FACT} The code changes every spring.",
    "Visitors must sign the guest book at the entrance and wear a badge.",
    "The garden behind the vault has roses, tulips and an old apple tree.",
]


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


def main() -> None:
    url, chat_model, embed_model = sys.argv[1:4]
    # A whitespace tokenizer for chunking: LlamaIndex's default (tiktoken) downloads its
    # vocabulary on first use, and this must run without that.
    Settings.tokenizer = str.split
    llm = OpenAILike(
        model=chat_model,
        api_base=f"{url}/v1",
        api_key="unused",
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=2048,
        max_tokens=48,
        temperature=0.0,
    )
    embedding = OpenAILikeEmbedding(
        model_name=embed_model, api_base=f"{url}/v1", api_key="unused", embed_batch_size=16
    )
    seen: dict[str, object] = {}

    hello = [ChatMessage(role="user", content="Say hello.")]
    seen["chat"] = llm.chat(hello).message.content
    seen["stream_deltas"] = [r.delta for r in llm.stream_chat(hello)]
    seen["complete"] = llm.complete("The capital of France is").text

    # One step of a function-calling agent: the model picks the tool and its arguments,
    # the tool runs, its result goes back, the model answers.
    tool = FunctionTool.from_defaults(fn=multiply)
    response = llm.chat_with_tools([tool], user_msg="What is 6 times 7?", tool_required=True)
    calls = llm.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    seen["tool_calls"] = [(c.tool_name, c.tool_kwargs) for c in calls]
    output = tool.call(**calls[0].tool_kwargs)
    history = [
        ChatMessage(role="user", content="What is 6 times 7?"),
        response.message,
        ChatMessage(
            role="tool",
            content=str(output),
            additional_kwargs={"tool_call_id": calls[0].tool_id, "name": calls[0].tool_name},
        ),
    ]
    seen["after_tool"] = llm.chat(history).message.content

    # A small RAG pipeline: Hearth embeds the documents and the question, LlamaIndex keeps
    # the index, Hearth answers from the retrieved text.
    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in DOCUMENTS], embed_model=embedding
    )
    engine = index.as_query_engine(llm=llm, similarity_top_k=1)
    answer = engine.query("What is the access code for the vault?")
    seen["rag_answer"] = str(answer)
    seen["rag_sources"] = [n.node.get_content() for n in answer.source_nodes]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
