"""Parity with the reference implementations, each reference step restated here line by line (not imported), on tiny
models and the same inputs as ours:
- RG-LCD: Ji4chenLi/rg-lcd `train_lcm_distill_sd_wds.py` and `reward_fn.py` (the expert reward term, the latent
  proxy RM's update and the student's proxy term);
- MLCM's segment target: G-U-N/Phased-Consistency-Model `code/text_to_image_sd15/train_pcm_lora_sd15.py`;
- the TLCM sampler: OPPO-Mente-Lab/TLCM `inference.py`.
Line numbers are those of the references' default branches as fetched for issue 17; the RG-LCD ones re-checked
for issue 33 at Ji4chenLi/rg-lcd cd17456d, HPSv2's transform at tgxs002/HPSv2 866735ec. The reward restatements
take nothing from `rglcd.rewards` but the models' weights: preprocessing, tokenisation and scores are written here.
"""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from transformers import AutoTokenizer, BertTokenizer

from rglcd.objectives import DistillBatch, LCDLoss, MLCMLoss, ProxyPreference, RewardGuidance, RGLCDLoss
from rglcd.rewards import RewardMix, training_score
from rglcd.rewards.clip import ClipReward
from rglcd.rewards.proxy import LatentProxyReward, preference_loss
from rglcd.scheduling_mlcm import MLCMScheduler
from tests.test_clip_rewards import tiny_clip
from tests.test_objectives import fake_net, reference_outputs
from tests.test_rewards_blip import TINY_VISION, blip_score, imagereward_files, load_tiny  # noqa: F401 (a fixture)

SCHED = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
AC = SCHED.alphas_cumprod
PROMPTS = ["a red apple", "a small cat", "a blue car", "a dog", "a green tree", "a house"]


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8,
                         scaling_factor=0.5).eval()


def reward_vae() -> AutoencoderKL:
    """tiny_vae with its output conv scaled by 1/4: decoded images (x / 2 + 0.5) within about [0.3, 0.7], where the
    reference's bicubic resize stays inside [0,1] (`reference_pixels`); so the clamp of line 1335 never acts here."""
    vae = tiny_vae()
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.25)
        vae.decoder.conv_out.bias.mul_(0.25)
    return vae


@pytest.fixture(scope="module")
def clip_rewards(tiny_sd21_repo) -> dict[str, ClipReward]:
    tok = AutoTokenizer.from_pretrained(tiny_sd21_repo / "tokenizer")
    pick = tiny_clip()
    with torch.no_grad():
        pick.logit_scale.fill_(3.9)  # a learnt-looking scale (exp 49.4), so 1 / exp(logit_scale) is checked
    return {"hps": ClipReward(tiny_clip(), tok, "hps"), "pickscore": ClipReward(pick, tok, "pickscore")}


# torchvision Normalize's OpenAI CLIP mean and std: reward_fn.py 14-17 (PickScore, ImageReward), HPSv2's
# constants.py OPENAI_DATASET_MEAN/STD (HPSv2.1, via transform.py 86-90 and 102).
REF_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
REF_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def reference_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """The reference's reward preprocessing, square images in [0,1] (B,3,s,s), s <= size -> (B,3,size,size).

    HPSv2.1: `preprocess_val.transforms[2:]` (reward_fn.py 216-217) with `light_augmentation=True` (line 202) is
    ResizeMaxSize(size) bicubic, then zero padding to square (HPSv2 transform.py 26-49, factory.py 368-375), then
    Normalize; PickScore: Resize(size, BICUBIC) then Normalize (reward_fn.py 13, 157-158); ImageReward: Resize,
    CenterCrop, Normalize (248-252). On a square image all three are one bicubic resize to size x size (torchvision
    on a float tensor: align_corners False; no antialias, its tensor default before 0.17) and Normalize, no clamp.
    The images are upscaled and kept where bicubic does not leave [0,1], so our documented differences (antialiased
    downscale, clamp after the resize: docs/references.md) are inactive and the two must agree at float tolerance.
    """
    assert images.shape[-1] == images.shape[-2] <= size
    resized = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    assert resized.min() >= 0 and resized.max() <= 1
    return (resized - REF_MEAN) / REF_STD


def pooled(out) -> torch.Tensor:
    """get_*_features' projection: a tensor in transformers 4, the output's pooler_output in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def reference_cos(reward: ClipReward, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """cos(image, text) (B,) of a CLIP reward as the reference's score_fn with return_logits False: PickScore
    reward_fn.py 157-176, the text through the processor's tokenizer (padding to the longest, truncation, attention
    mask) and get_text_features; HPSv2.1 216-228 (open_clip encode_image/encode_text(normalize=True), the text
    pooled at its end token as CLIPModel pools it). Each embedding divided by its norm."""
    model = reward.model
    image_embs = pooled(model.get_image_features(pixel_values=reference_pixels(images, model.config.vision_config
                                                                                .image_size)))
    image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
    tokens = reward.tokenizer(prompts, padding=True, truncation=True,
                              max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
    text_embs = pooled(model.get_text_features(**tokens))
    text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
    return (text_embs * image_embs).sum(-1)


def lcd_batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 4, 8, 8, generator=g),
            torch.randn(n, 6, 16, generator=g), torch.zeros(n, 6, 16), g)


@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_rg_lcd_step_with_the_expert_reward_matches_reference(clip_rewards, beta):
    """train_lcm_distill_sd_wds.py lines 1320-1347 (`--direct_optim_expert_reward`, reward hpsv2) with its
    `huber_loss` (lines 687-689): loss = huber mean - reward_scale x mean(cos), the cos restated from reward_fn.py."""
    hps, vae = clip_rewards["hps"], reward_vae()
    latents, noise, ctx, uctx, g = lcd_batch(6)
    loss_fn = LCDLoss(AC, w_min=5.0, w_max=15.0)
    draw = loss_fn.draw(6, g)
    student, teacher, target = fake_net(0.3), fake_net(0.5), fake_net(0.4)
    objective = RGLCDLoss(loss_fn, RewardGuidance(hps, vae), beta)
    per_sample, aux = objective.batch_loss(student, teacher, target,
                                           DistillBatch(latents, noise, ctx, uctx, draw, texts=PROMPTS))
    reward, ours = aux["reward"], per_sample.mean()

    model_pred, target_pred = reference_outputs(student, teacher, target, latents, ctx, uctx, noise, draw["index"],
                                                draw["w"], SCHED)
    distill_loss = (torch.sqrt((model_pred.float() - target_pred.float()) ** 2 + 0.001 ** 2) - 0.001).mean()
    pred_latents = model_pred / vae.config.scaling_factor  # 1329
    decoded_imgs = vae.decode(pred_latents, return_dict=False)[0]  # 1331-1334
    decoded_imgs = (decoded_imgs / 2 + 0.5).clamp(0, 1)  # 1335
    expert_rewards = reference_cos(hps, decoded_imgs, PROMPTS)  # 1336
    reward_loss = -expert_rewards.mean() * beta  # 1337
    ref = distill_loss + reward_loss  # 1347

    assert expert_rewards.abs().min() > 1e-3  # a reward term that shows a changed scale or sign
    assert torch.allclose(reward, expert_rewards, atol=1e-6)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_pickscore_trains_on_the_reference_cos_and_shows_the_logit_scale(clip_rewards):
    """reward_fn.py get_pick_score_fn, lines 153-179: the training reward is the plain cos (return_logits False);
    the display score stays exp(logit_scale) x cos (line 178's logits)."""
    pick = clip_rewards["pickscore"]
    images = 0.25 + 0.5 * torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ref = reference_cos(pick, images, PROMPTS)
    assert ref.abs().min() > 1e-3
    assert torch.allclose(training_score(pick, images, PROMPTS), ref, atol=1e-6)
    assert torch.allclose(pick(images, PROMPTS), torch.tensor(3.9).exp() * ref, atol=1e-5)


def reference_clipped_imagereward(layout: dict, tokenizer_dir: Path, images: torch.Tensor, prompts: list[str]
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """reward_fn.py get_img_reward_fn, lines 248-273: (r, -relu(-r + 2)), both (B,). Resize + CenterCrop +
    Normalize, BLIP's tokenizer (bert-base-uncased + [DEC] bos + [ENC], BLIP's init_tokenizer) padded to 35 tokens,
    r = ImageReward's score_gard ((MLP([CLS] state) - mean) / std; `blip_score` restates it on the checkpoint's keys).
    """
    tokenizer = BertTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    r = blip_score(layout, reference_pixels(images, TINY_VISION["image_size"]), tokens.input_ids,
                   tokens.attention_mask)
    return r, -F.relu(-r + 2)


def test_hps_plus_clipped_imagereward_mix_is_the_references(clip_rewards, imagereward_files):  # noqa: F811
    """reward_fn.py get_weighted_hpsv2_img_reward_fn, lines 324-331, weights [1, 0.1]: 1 x HPSv2.1's cos +
    0.1 x ImageReward clipped at 2 (line 273); ours `hpsv2.1=1,imagereward-clipped=0.1`. The ImageReward head's
    last bias is shifted so that about half the images score above 2 and the clip shows."""
    root, _, layout = imagereward_files
    images = 0.25 + 0.5 * torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        r, _ = reference_clipped_imagereward(layout, root / "tokenizer", images, PROMPTS)
    shift = (2.0 - r.median()) * 1.0333394966054072  # raises r by 2 - median(r)
    layout = {**layout, "mlp.layers.7.bias": layout["mlp.layers.7.bias"] + shift}
    imagereward = load_tiny(root, clip_at=2.0)
    with torch.no_grad():
        imagereward.head.layers[7].bias.add_(shift)
        mix = RewardMix({"hpsv2.1": clip_rewards["hps"], "imagereward-clipped": imagereward},
                        {"hpsv2.1": 1.0, "imagereward-clipped": 0.1})
        ours = training_score(mix, images, PROMPTS)
        r, clipped = reference_clipped_imagereward(layout, root / "tokenizer", images, PROMPTS)
        ref = 1.0 * reference_cos(clip_rewards["hps"], images, PROMPTS) + 0.1 * clipped
    assert (r > 2).any() and (r < 2).any() and (clipped < 0).any()
    assert torch.allclose(ours, ref, atol=1e-5)


def reference_latent_cos(rm: LatentProxyReward, latents: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
    """latent_score_fn, train_lcm_distill_sd_wds.py 848-860, return_logits False: (B,) the cosine of the latent RM's
    image and text features (open_clip's forward normalises both). The towers are ours (docs/references.md, proxy
    network): the image tower on the latents, the text tower on the text encoder's states averaged over tokens."""
    image = rm.image_tower(latents)
    text = rm.text_tower(text_states.sum(1) / text_states.shape[1])
    return F.cosine_similarity(image, text, dim=-1)


def test_proxy_update_and_student_proxy_term_match_reference(clip_rewards):
    """The student's proxy term, lines 1329 and 1338-1346, and one latent RM update (distillation loss), lines
    1359-1457, with reward hpsv2 (expert logits = cos x the HPS model's exp(logit_scale), lines 1401-1405 and
    reward_fn.py 228-230)."""
    hps, vae = clip_rewards["hps"], reward_vae()
    sf = vae.config.scaling_factor
    torch.manual_seed(2)
    proxy = LatentProxyReward(4, 16, width=8, embed_dim=8)
    ref_rm = copy.deepcopy(proxy)
    g = torch.Generator().manual_seed(3)
    student_x0, target, z0 = (torch.randn(6, 4, 8, 8, generator=g) for _ in range(3))
    ctx = torch.randn(6, 5, 16, generator=g)
    objective = ProxyPreference(RewardGuidance(hps, vae), "reference", "kl", batch=4)
    beta = 0.7

    x0 = student_x0.clone().requires_grad_()
    rg = RGLCDLoss(LCDLoss(AC), RewardGuidance(hps, vae), beta, proxy=proxy, preference=objective)
    ours_term = -beta * rg.reward(x0, DistillBatch(None, None, ctx, ctx, {}, texts=PROMPTS)).mean()
    ours_term.backward()
    x0_ref = student_x0.clone().requires_grad_()
    pred_latents = x0_ref / sf  # 1329
    latent_rewards = reference_latent_cos(ref_rm, pred_latents, ctx)  # 1343-1345
    reward_loss = -latent_rewards.mean() * beta  # 1346
    reward_loss.backward()
    assert torch.allclose(ours_term, reward_loss, atol=1e-6) and torch.allclose(x0.grad, x0_ref.grad, atol=1e-6)

    opt, ref_opt = (torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0) for m in (proxy, ref_rm))
    loss, scores, expert, _ = objective(proxy, [student_x0, target, z0], ctx, PROMPTS,
                                     torch.Generator().manual_seed(4))
    opt.zero_grad()
    loss.backward()
    opt.step()

    indices = torch.randperm(6, generator=torch.Generator().manual_seed(4))[:4]  # 1363-1365 (global RNG there)
    pred_latents = (student_x0 / sf)[indices]  # 1366
    target_latents = target[indices] / sf  # 1367-1368
    gt_latents = z0[indices] / sf  # 1369-1370
    text = [PROMPTS[i] for i in indices.tolist()]
    text_states = ctx[indices]
    concat_latents = torch.cat([pred_latents, target_latents, gt_latents], dim=0)  # 1373-1375
    concat_text, concat_states = text + text + text, torch.cat([text_states] * 3)  # 1376
    with torch.no_grad():
        decoded_imgs = (vae.decode(concat_latents, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)  # 1379-1391
        expert_rewards = reference_cos(hps, decoded_imgs, concat_text) * hps.model.logit_scale.exp()  # 1402-1404
        expert_rewards = torch.stack(torch.chunk(expert_rewards, 3))  # 1405
    pred_logits = reference_latent_cos(ref_rm, concat_latents.detach(), concat_states) * ref_rm.logit_scale.exp()
    # 1411-1416: return_logits, cos x output["logit_scale"] (859), which open_clip's forward returns exp'd
    latent_logits = torch.stack(torch.chunk(pred_logits, 3))  # 1417
    rm_loss = 0.0
    for i in range(2):  # 1421-1443
        for j in range(i + 1, 3):
            logits = torch.stack([latent_logits[i], latent_logits[j]]).transpose(0, 1)
            expert_logits = torch.stack([expert_rewards[i], expert_rewards[j]]).transpose(0, 1)
            expert_prob = F.softmax(expert_logits, dim=1)
            rm_loss += F.kl_div(F.log_softmax(logits, dim=1), expert_prob, reduction="batchmean")
    ref_opt.zero_grad()
    (rm_loss * 1.0).backward()  # 1457 (rm_loss_scale 1)
    ref_opt.step()

    assert torch.allclose(expert, expert_rewards.T, rtol=1e-5, atol=1e-5)
    assert torch.allclose(loss, rm_loss, rtol=1e-5, atol=1e-6) and loss > 1e-4
    for p, q in zip(proxy.parameters(), ref_rm.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_the_first_proxy_is_kept_as_batch_softmax(clip_rewards):
    """`--proxy-variant batch-softmax`: the logit on scaled latents for the student; the whole batch, one
    three-way KL against the expert's training scores for the proxy (no reference: what the first runs used)."""
    hps, vae = clip_rewards["hps"], reward_vae()
    torch.manual_seed(2)
    proxy = LatentProxyReward(4, 16, width=8, embed_dim=8)
    g = torch.Generator().manual_seed(3)
    cands = [torch.randn(6, 4, 8, 8, generator=g) for _ in range(3)]
    ctx = torch.randn(6, 5, 16, generator=g)
    objective = ProxyPreference(RewardGuidance(hps, vae), "batch-softmax", "kl", temperature=0.5)
    assert torch.allclose(objective.student_reward(proxy, cands[0], ctx), proxy(cands[0], ctx))
    loss, scores, expert, _ = objective(proxy, cands, ctx, PROMPTS, torch.Generator())
    flat = torch.stack(cands, 1).flatten(0, 1)
    with torch.no_grad():
        images = (vae.decode(flat / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        want_expert = reference_cos(hps, images, [p for p in PROMPTS for _ in range(3)]).view(6, 3)
    want = preference_loss(proxy(flat, ctx.repeat_interleave(3, 0)).view(6, 3), want_expert, "kl", 0.5).mean()
    assert scores.shape == (6, 3) and torch.allclose(expert, want_expert, atol=1e-6)
    assert torch.allclose(loss, want, atol=1e-6)


def test_pairwise_cross_entropy_lets_the_data_latent_win():
    """Lines 1444-1449 (`--latent_rm_loss_type cross_entropy`): the pair's expert argmax as label, except that the
    data latent wins each pair it is in. (Line 1445 takes the argmax over the wrong axis; the pair's argmax, line
    1429, is what it means.)"""
    g = torch.Generator().manual_seed(6)
    proxy, expert = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    ref = 0.0
    for i, j in ((0, 1), (0, 2), (1, 2)):
        logits = proxy[:, [i, j]]
        labels = expert[:, [i, j]].argmax(dim=1)
        if j == 2:
            labels = torch.ones_like(labels)
        ref += F.cross_entropy(logits, labels)
    assert torch.allclose(preference_loss(proxy, expert, "pairwise-ce").mean(), ref, atol=1e-6)


def pcm_reference_loss(student, teacher, target, latents, ctx, uctx, noise, index, w, multiphase):
    """train_pcm_lora_sd15.py: DDIMSolver (lines 289-341) and the training step (lines 1147-1292): per-sample huber
    (the script's loss is its batch mean). The LoRA student takes no guidance embedding (timestep_cond None)."""
    ddim_timesteps = (np.arange(1, 51) * 20).round().astype(np.int64) - 1  # 292-294
    ddim_alpha_cumprods_prev = np.asarray([AC[0]] + AC[ddim_timesteps[:-1]].tolist())  # 297-299
    a_prev_table = torch.from_numpy(ddim_alpha_cumprods_prev).float()

    def ddim_style_multiphase_pred(pred_x0, pred_noise, timestep_index):  # 321-341
        inference_indices = np.linspace(0, 50, num=multiphase, endpoint=False)
        inference_indices = torch.from_numpy(np.floor(inference_indices).astype(np.int64)).long()
        expanded_timestep_index = timestep_index.unsqueeze(1).expand(-1, inference_indices.size(0))
        valid_indices_mask = expanded_timestep_index >= inference_indices
        last_valid_index = valid_indices_mask.flip(dims=[1]).long().argmax(dim=1)
        last_valid_index = inference_indices.size(0) - 1 - last_valid_index
        timestep_index = inference_indices[last_valid_index]
        alpha_cumprod_prev = a_prev_table[timestep_index].view(-1, 1, 1, 1)
        return alpha_cumprod_prev.sqrt() * pred_x0 + (1.0 - alpha_cumprod_prev).sqrt() * pred_noise

    def predicted_origin(out, ts, z):
        return (z - (1 - AC[ts]).sqrt().view(-1, 1, 1, 1) * out) / AC[ts].sqrt().view(-1, 1, 1, 1)

    start_timesteps = torch.from_numpy(ddim_timesteps)[index]  # 1151
    timesteps = start_timesteps - 20  # 1152
    timesteps = torch.where(timesteps < 0, torch.zeros_like(timesteps), timesteps)  # 1153-1155
    inference_indices = np.floor(np.linspace(0, 50, num=multiphase, endpoint=False)).astype(np.int64)  # 1157-1160
    inference_indices = torch.from_numpy(inference_indices).long()
    c_skip_start, c_out_start = torch.zeros(len(index)), torch.ones(len(index))  # 255-259
    c_skip = torch.isin(index, inference_indices).float()  # 250-253
    c_out = 1.0 - c_skip
    noisy_model_input = SCHED.add_noise(latents, noise, start_timesteps)  # 1177-1180
    noise_pred = student(noisy_model_input, start_timesteps, ctx, None)  # 1189-1195
    pred_x_0 = predicted_origin(noise_pred, start_timesteps, noisy_model_input)  # 1198-1205
    model_pred = ddim_style_multiphase_pred(pred_x_0, noise_pred, index)  # 1209-1211
    model_pred = c_skip_start.view(-1, 1, 1, 1) * noisy_model_input + c_out_start.view(-1, 1, 1, 1) * model_pred
    cond_out = teacher(noisy_model_input, start_timesteps, ctx, None)  # 1219-1223
    uncond_out = teacher(noisy_model_input, start_timesteps, uctx, None)  # 1238-1244
    cond_x0 = predicted_origin(cond_out, start_timesteps, noisy_model_input)
    uncond_x0 = predicted_origin(uncond_out, start_timesteps, noisy_model_input)
    wv = w.view(-1, 1, 1, 1)
    pred_x0 = cond_x0 + wv * (cond_x0 - uncond_x0)  # 1254
    pred_noise = cond_out + wv * (cond_out - uncond_out)  # 1255-1257
    a_prev = a_prev_table[index].view(-1, 1, 1, 1)  # ddim_step, 313-319
    x_prev = a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * pred_noise
    target_noise_pred = target(x_prev, timesteps, ctx, None)  # 1262-1269
    pred_x_0 = predicted_origin(target_noise_pred, timesteps, x_prev)  # 1270-1276
    tgt = ddim_style_multiphase_pred(pred_x_0, target_noise_pred, index)  # 1277-1279
    tgt = c_skip.view(-1, 1, 1, 1) * x_prev + c_out.view(-1, 1, 1, 1) * tgt  # 1280
    return (torch.sqrt((model_pred - tgt) ** 2 + 0.001 ** 2) - 0.001).flatten(1).mean(1)  # 1287-1292


@pytest.mark.parametrize("segments", [1, 2, 4, 8])
def test_mlcm_target_matches_phased_consistency_distillation(segments):
    """MLCMLoss with its defaults (floor edges, DDIM jump on the lowest segment) against PCM's step, on indices
    that include every edge where floor and round differ (S = 4: 37; S = 8: 18, 37, 43), edges themselves and
    the lowest segment."""
    index = torch.tensor([0, 3, 11, 12, 17, 18, 24, 36, 37, 38, 42, 43, 49])
    latents, noise, ctx, uctx, g = lcd_batch(len(index), seed=1)
    loss_fn = MLCMLoss(AC, w_min=3.0, w_max=15.0, num_segments=segments)
    draw = loss_fn.draw(len(index), g)
    draw["index"], draw["start"] = index, loss_fn.grid[index]
    draw["end"] = (draw["start"] - loss_fn.k).clamp_min(0)

    def no_w(scale):  # PCM's LoRA UNet sees no guidance embedding
        net = fake_net(scale)
        return lambda z, t, c, w: net(z, t, c, None)

    nets = no_w(0.3), no_w(0.5), no_w(0.4)
    ours, _ = loss_fn(*nets, latents, ctx, uctx, noise, draw)
    ref = pcm_reference_loss(*nets, latents, ctx, uctx, noise, index, draw["w"], segments)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-6)
    if segments in (4, 8):  # this package's first MLCM differs exactly where the issue says
        first = MLCMLoss(AC, w_min=3.0, w_max=15.0, num_segments=segments, edge_rounding="round", clean_end="lcm")
        old, _ = first(*nets, latents, ctx, uctx, noise, draw)
        assert not torch.allclose(old, ref, rtol=1e-4, atol=1e-6)


TLCM_LISTS = {1: [0, 8], 2: [0, 4, 8], 3: [0, 4, 7, 8], 4: [0, 2, 4, 7, 8], 5: [0, 2, 4, 6, 7, 8],
              6: [0, 2, 4, 5, 6, 7, 8], 7: [0, 2, 3, 4, 5, 6, 7, 8], 8: list(range(9))}  # inference.py 194-207


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_tlcm_sampler_states_match_the_released_inference(steps):
    """inference.py: `denoisecm` (lines 93-101), the step lists (186-207) and the loop (213-223): x0 from the
    model's eps, re-noised with fresh Gaussian noise to the next timestep; the output is the last x0."""
    net = fake_net(0.2)
    ctx = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(7))
    scheduler = MLCMScheduler(sampler="tlcm")
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(8)
    z = torch.randn(2, 4, 8, 8, generator=g)
    ours = []
    for t in scheduler.timesteps:
        z, denoised = scheduler.step(net(z, t.expand(2), ctx, None), t, z, generator=g, return_dict=False)
        ours.append(z)

    g = torch.Generator().manual_seed(8)
    ts = torch.linspace(1000 - 1, 0, 9, dtype=int)  # 189
    ts = ts[TLCM_LISTS[steps]]  # 194-207
    sample = torch.randn(2, 4, 8, 8, generator=g)  # 213, 218
    ref = []
    for j in range(0, len(ts) - 1):  # 219
        t = ts[[j]].repeat(2)
        alpha_t, sigma_t = AC[t].sqrt().view(-1, 1, 1, 1), (1 - AC[t]).sqrt().view(-1, 1, 1, 1)  # 97-98
        x = (sample - sigma_t * net(sample, t, ctx, None)) / alpha_t  # 99-100
        sample = SCHED.add_noise(x, torch.randn(x.shape, generator=g), torch.tensor([ts[j + 1]]))  # 221
        ref.append(sample)
    assert scheduler.timesteps.tolist() == ts[:-1].tolist()
    for a, b in zip(ours[:-1], ref[:-1]):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(ours[-1], x, atol=1e-5) and torch.equal(ours[-1], denoised)  # 223 decodes x


def test_tlcm_sampler_limits():
    scheduler = MLCMScheduler(sampler="tlcm")
    with pytest.raises(ValueError, match="1 to 8 steps"):
        scheduler.set_timesteps(9)
    with pytest.raises(ValueError, match="unknown MLCM sampler"):
        MLCMScheduler(sampler="sde")


def test_lcd_reference_options():
    """diffusers' train_lcm_distill_sd_wds.py leaves `time_embedding.cond_proj` at its layer's init (the student
    differs from the teacher at step 0); ours zeroes it unless cond_proj_init is 'random'."""
    from rglcd.training.step import student_from_teacher
    from tests.hub_layouts import tiny_unet

    teacher = tiny_unet()
    zero, rand = student_from_teacher(teacher, 16), student_from_teacher(teacher, 16, "random")
    assert zero.time_embedding.cond_proj.weight.abs().max() == 0
    assert rand.time_embedding.cond_proj.weight.abs().max() > 0
    with pytest.raises(ValueError, match="cond-proj-init"):
        student_from_teacher(teacher, 16, "ones")


def test_posterior_sampled_data_latents_match_the_lcd_script():
    """diffusers' train_lcm_distill_sd_wds.py encodes each step's images with `vae.encode(pixel_values)
    .latent_dist.sample()` times scaling_factor; restated through the posterior (mean, logvar clamped to
    [-30, 20], std = exp(logvar / 2)); ours with a generator draws the same, without one it is the mode."""
    from rglcd.models import encode_latents

    vae = tiny_vae()
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(9)) * 2 - 1
    ours = encode_latents(vae, images, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(images))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        ref = (mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(10))) * 0.5
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(encode_latents(vae, images), mean * 0.5, atol=1e-6) and not torch.allclose(ours, mean * 0.5)
