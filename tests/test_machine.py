"""The machine fingerprint that decides whether two engines' serving times compare."""

from brr.machine import cpu_model_and_flags, describe

CPUINFO = """processor\t: {n}
model name\t: AMD EPYC
flags\t\t: fpu sse2 {flags}

"""


def _cpuinfo(tmp_path, name, flags):
    path = tmp_path / name
    path.write_text("".join(CPUINFO.format(n=n, flags=flags) for n in range(2)))
    return path


def test_same_model_name_with_other_vector_extensions_is_another_machine(tmp_path):
    # Both machines call themselves "AMD EPYC"; their engines differ several-fold.
    avx512 = _cpuinfo(tmp_path, "avx512", "avx2 fma avx512f avx512_bf16 avx512_vnni")
    avx2 = _cpuinfo(tmp_path, "avx2", "avx2 fma")
    assert cpu_model_and_flags(avx512) == ("AMD EPYC", ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"])
    assert cpu_model_and_flags(avx2) == ("AMD EPYC", ["avx2", "fma"])
    assert describe(avx512) != describe(avx2)
    assert describe(avx2) == describe(_cpuinfo(tmp_path, "avx2-again", "fma avx2"))


def test_without_cpuinfo_the_platform_names_the_cpu(tmp_path):
    model, flags = cpu_model_and_flags(tmp_path / "absent")
    assert model and flags == []
    assert "threads" in describe(tmp_path / "absent")
